"""The playground's endpoints (mounted only by `chatbuffer serve`): a typed message travels the
real webhook path, signed as Chatwoot signs it, and the page reads the conversation back."""

from __future__ import annotations

import dataclasses
from typing import AsyncIterator

import httpx
import pytest

from shared.config import Settings
from shared.runtime import Runtime
from shared.web.app import create_app
from tests.support.sql import buffers, fetch, make_due


@pytest.fixture
async def playground(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    # As serve runs it locally: replies to the console, no model key; the webhook secret stays set,
    # so every message must be signed to get in.
    local = dataclasses.replace(settings, chatwoot_base_url=None, chatwoot_api_token=None, openai_api_key=None)
    runtime = Runtime(local)
    app = create_app(runtime, playground=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://local") as client:
        yield client, runtime
    await runtime.close()


async def test_a_typed_burst_is_signed_buffered_and_answered_once(
        playground: tuple[httpx.AsyncClient, Runtime], database_url: str) -> None:
    client, runtime = playground
    for text in ("Hola", "¿tienen talla 27?"):
        response = await client.post("/playground/api/messages", json={"conversation_id": 77, "text": text})
        assert response.status_code == 200 and response.json()["status"] == "buffered", response.text
    view = (await client.get("/playground/api/conversations/77")).json()
    (burst,) = view["bursts"]
    assert burst["state"] == "active" and burst["message_count"] == 2 and view["model"] == "placeholder"
    assert view["now"] < burst["due_at"] < burst["max_age_at"]

    await make_due(database_url)
    assert dict(await runtime.new_sweeper().run_once()) == {"completed": 1}
    (burst,) = (await client.get("/playground/api/conversations/77")).json()["bursts"]
    assert "no OPENAI_API_KEY" in burst["reply"] and "received 2 message(s)" in burst["reply"]
    rows = await buffers(database_url)
    assert [(r["account_id"], r["conversation_id"], r["status"]) for r in rows] == [("playground", "77", "completed")]


async def test_bad_input_and_cross_site_posts_are_refused_and_store_nothing(
        playground: tuple[httpx.AsyncClient, Runtime], database_url: str) -> None:
    client, _ = playground
    form = await client.post("/playground/api/messages", content=b'{"conversation_id": 1, "text": "hi"}',
                             headers={"content-type": "text/plain"})
    assert form.status_code == 415
    for body in ({"conversation_id": 0, "text": "hi"}, {"conversation_id": 1, "text": " "},
                 {"conversation_id": "x", "text": "hi"}, {"text": "hi"}, {"conversation_id": 1, "text": "a" * 4001}):
        response = await client.post("/playground/api/messages", json=body)
        assert response.status_code == 400 and response.json()["error"], body
    assert (await client.get("/playground/api/conversations/abc")).status_code == 400
    assert await fetch(database_url, "select 1 from public.buffered_messages") == []
