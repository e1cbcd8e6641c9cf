"""No scheduler (buffer_sweeper off): the webhook flushes by count-or-age, off the request path."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import httpx
import pytest

from shared.config import Settings
from shared.dispatch import InProcessDispatcher
from shared.runtime import Runtime
from shared.web.app import create_app
from tests.conftest import incoming, signed_headers
from tests.support.far_side import FarSide
from tests.support.sql import buffers, execute, make_due, set_flag


@pytest.fixture
async def app_runtime(settings: Settings, database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    await set_flag(database_url, "buffer_sweeper", False)
    runtime = Runtime(settings)
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, runtime
    await runtime.close()


async def send(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    response = await client.post("/webhooks/chatwoot", content=body, headers=signed_headers(body))
    assert response.status_code == 200, response.text
    return response.json()


async def settle(runtime: Runtime) -> None:
    dispatcher = runtime.dispatcher
    assert isinstance(dispatcher, InProcessDispatcher)
    await dispatcher.wait_idle()


async def test_two_messages_flush_at_once(app_runtime: Any, far_side: FarSide) -> None:
    client, runtime = app_runtime
    first = await send(client, incoming(1, "Hola"))
    assert first["flush_now"] is False
    await settle(runtime)
    assert far_side.replies == []
    second = await send(client, incoming(2, "¿tienen talla 27?"))
    assert second["flush_now"] is True  # answered at once; the pass runs after the response
    await settle(runtime)
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola | ¿tienen talla 27?"]


async def test_lone_message_is_picked_up_by_other_traffic(
    app_runtime: Any, far_side: FarSide, database_url: str
) -> None:
    client, runtime = app_runtime
    lone = await send(client, incoming(1, "¿Siguen abiertos?", conversation_id=500))
    await make_due(database_url, lone["buffer_id"])  # FALLBACK_FLUSH_AGE_SECONDS have passed
    other = await send(client, incoming(2, "Hola", conversation_id=600))
    assert other["flush_now"] is False
    await settle(runtime)
    assert [(r["conversation"], r["body"]["content"]) for r in far_side.replies] == [("500", "echo: ¿Siguen abiertos?")]


async def test_lone_message_on_an_idle_system_waits_for_a_sweep(
    app_runtime: Any, far_side: FarSide, database_url: str
) -> None:
    # The documented limit of the fallback: nothing runs until traffic, /sweep or a cron comes.
    client, runtime = app_runtime
    lone = await send(client, incoming(1, "¿Hola?"))
    await make_due(database_url, lone["buffer_id"])
    await settle(runtime)
    assert far_side.replies == []
    response = await client.post("/sweep", headers={"authorization": "Bearer test-sweep-token"})
    assert response.status_code == 202
    await settle(runtime)
    assert len(far_side.replies) == 1


async def test_buffering_off_answers_each_message_alone(app_runtime: Any, far_side: FarSide, database_url: str) -> None:
    client, runtime = app_runtime
    await set_flag(database_url, "message_buffering", False)
    results = [await send(client, incoming(n, f"mensaje {n}")) for n in (1, 2)]
    assert all(r["flush_now"] for r in results)
    await settle(runtime)
    assert sorted(r["body"]["content"] for r in far_side.replies) == ["echo: mensaje 1", "echo: mensaje 2"]
    assert {r["status"] for r in await buffers(database_url)} == {"completed"}


async def test_flags_flip_live_without_restart(app_runtime: Any, far_side: FarSide, database_url: str) -> None:
    client, runtime = app_runtime
    assert (await send(client, incoming(1, "a", conversation_id=1)))["flush_now"] is False
    assert (await send(client, incoming(2, "b", conversation_id=1)))["flush_now"] is True
    await set_flag(database_url, "buffer_sweeper", True)  # a scheduler exists again: no self-flush
    assert (await send(client, incoming(3, "c", conversation_id=2)))["flush_now"] is False
    assert (await send(client, incoming(4, "d", conversation_id=2)))["flush_now"] is False
    await execute(database_url, "update public.buffer_settings set setting_value = 3"
                                " where setting_name = 'fallback_flush_messages'")
    await set_flag(database_url, "buffer_sweeper", False)
    assert (await send(client, incoming(5, "e", conversation_id=3)))["flush_now"] is False
    assert (await send(client, incoming(6, "f", conversation_id=3)))["flush_now"] is False
    assert (await send(client, incoming(7, "g", conversation_id=3)))["flush_now"] is True
    await settle(runtime)
