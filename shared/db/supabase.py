"""Connector through Supabase's Data API (PostgREST): `rpc(function, named args)`.

Production on Supabase: the Lambdas hold no database connection, only the project URL and the
service-role (or `sb_secret_...`) key, and every call is one HTTP request to the same SQL
functions the direct connector calls. Only supabase-py's PostgREST client is imported: the full
`supabase` client would also load auth, storage, realtime and functions clients the webhook never
uses, on its cold-start path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

import httpx
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError

from shared.db.errors import StoreError, StoreUnavailable, redacted

# Well under API Gateway's 30 s (supabase-py's own default is 120 s): a hung call must fail in
# time for Chatwoot to retry the delivery, and for the sweeper to record the failure.
DEFAULT_TIMEOUT_SECONDS = 10


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's hex input form: PostgREST passes it to the function as text
    return value


class SupabaseConnector:
    def __init__(self, url: str, service_key: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._url = url.rstrip("/")
        self._key = service_key
        self._timeout = timeout
        self._client: AsyncPostgrestClient | None = None

    def _get_client(self) -> AsyncPostgrestClient:
        if self._client is None:
            # Legacy JWT keys and the new sb_secret_ keys both go in `apikey`; the key is sent as
            # the bearer too, as supabase-py does. The client adds these headers to every request;
            # the httpx client we hand it only carries the timeout (its own parameter is deprecated).
            base_url = f"{self._url}/rest/v1"
            headers = {"Accept": "application/json", "Content-Type": "application/json",
                       "apikey": self._key, "Authorization": f"Bearer {self._key}"}
            http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(self._timeout))
            # postgrest-py would retry only GETs; off all the same, so no call is ever repeated
            # behind our back: callers retry at their own level (Chatwoot redelivers on 500).
            self._client = AsyncPostgrestClient(base_url, headers=headers, http_client=http, retry_enabled=False)
        return self._client

    async def call(self, function: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        body = {name: _jsonable(value) for name, value in params.items()}
        try:
            response = await self._get_client().rpc(function, body).execute()
        except APIError as exc:
            # Details are left out and the message redacted: either may quote the refused row.
            raise StoreError(f"{function}: {exc.code} {redacted(str(exc.message))}", code=exc.code) from None
        except Exception as exc:  # the HTTP layer: timeouts, refused connections, bad gateways
            raise StoreUnavailable(f"{function}: Supabase unreachable: {type(exc).__name__}: {exc}") from exc
        data = response.data
        return data if isinstance(data, list) else [data]

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
