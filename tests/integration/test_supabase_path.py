"""Production's data path: the app and the sweeper with only SUPABASE_URL and a service key."""

from __future__ import annotations

import dataclasses
import json

import httpx

from shared.config import Settings
from shared.db.supabase import SupabaseConnector
from shared.runtime import Runtime
from shared.web.app import create_app
from tests.conftest import SERVICE_ROLE_KEY, incoming, signed_headers
from tests.support.far_side import FarSide
from tests.support.sql import buffers, make_due


async def post(client: httpx.AsyncClient, payload: dict) -> httpx.Response:
    body = json.dumps(payload).encode()
    return await client.post("/webhooks/chatwoot", content=body, headers=signed_headers(body))


async def test_burst_answered_through_the_data_api(
    settings: Settings, gateway_url: str, far_side: FarSide, database_url: str
) -> None:
    supabase_only = dataclasses.replace(settings, database_url=None, supabase_url=gateway_url,
                                        supabase_service_role_key=SERVICE_ROLE_KEY)
    runtime = Runtime(supabase_only)
    assert isinstance(runtime.store._connector, SupabaseConnector)
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await post(client, incoming(1, "Hola"))).json()["status"] == "buffered"
        assert (await post(client, incoming(2, "¿talla 27?"))).json()["status"] == "buffered"
        assert (await post(client, incoming(2, "¿talla 27?"))).json()["status"] == "duplicate"
    await make_due(database_url)
    assert dict(await runtime.new_sweeper().run_once()) == {"completed": 1}
    await runtime.close()
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola | ¿talla 27?"]
    assert [(b["status"], b["message_count"]) for b in await buffers(database_url)] == [("completed", 2)]


async def test_supabase_down_gets_500_so_chatwoot_retries(settings: Settings) -> None:
    down = dataclasses.replace(settings, database_url=None, supabase_url="http://127.0.0.1:1",
                               supabase_service_role_key=SERVICE_ROLE_KEY, supabase_timeout_seconds=2)
    runtime = Runtime(down)
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await post(client, incoming(1, "Hola"))
    await runtime.close()
    assert response.status_code == 500


def test_supabase_settings_come_in_pairs() -> None:
    import pytest

    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="go together"):
        Settings.from_env({"SUPABASE_URL": "https://x.supabase.co"})
    s = Settings.from_env({"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_SERVICE_ROLE_KEY": "sb_secret_abc"})
    assert s.uses_supabase and "sb_secret_abc" not in repr(s)
