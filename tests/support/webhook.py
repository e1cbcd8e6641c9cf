"""TEST CODE: the app as Chatwoot sees it (signed webhooks in) and the sweeper, on one Runtime."""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.runtime import Runtime
from shared.web.app import create_app

URL = "/webhooks/chatwoot"


def body_of(payload: dict[str, Any] | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()


class Bot:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime)),
                                        base_url="http://test")

    async def post(self, payload: dict[str, Any] | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST a Chatwoot event, signed like Chatwoot signs it unless `headers` are given."""
        from tests.conftest import signed_headers

        body = body_of(payload)
        return await self.client.post(URL, content=body, headers=headers or signed_headers(body))

    async def status_of(self, payload: dict[str, Any] | bytes) -> str:
        response = await self.post(payload)
        assert response.status_code == 200, response.text
        return str(response.json()["status"])

    async def sweep(self) -> dict[str, int]:
        return dict(await self.runtime.new_sweeper().run_once())

    async def close(self) -> None:
        await self.client.aclose()
        await self.runtime.close()
