"""`chatbuffer serve` as a user runs it: a subprocess, real HTTP in, the fake far side out."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import WEBHOOK_SECRET, chatwoot_fixture, incoming, signed_headers
from tests.support.far_side import FarSide
from tests.support.processes import chatbuffer_serve
from tests.support.sql import buffers


@pytest.fixture
def server(database_url: str, far_side: FarSide) -> Iterator[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": f"{far_side.url}/v1", "OPENAI_MODEL": "fake-model",
        "CHATWOOT_BASE_URL": far_side.url, "CHATWOOT_API_TOKEN": "test-token",
        "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "BUFFER_WINDOW_SECONDS": "0.6", "BUFFER_MAX_AGE_SECONDS": "10", "SWEEP_INTERVAL_SECONDS": "1",
    }
    with chatbuffer_serve(env, output=[]) as url:
        yield url


def post(url: str, payload: dict[str, Any], **header_options: Any) -> httpx.Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return httpx.post(f"{url}/webhooks/chatwoot", content=body, headers=signed_headers(body, **header_options))


def settle(far_side: FarSide, expected: int) -> None:
    """Wait for `expected` replies, then long enough that any extra reply would show up too."""
    far_side.wait_for_replies(expected, timeout=15)
    time.sleep(1.5)
    assert len(far_side.replies) == expected, far_side.replies


async def test_burst_answered_once_then_next_turn_sees_history(server: str, far_side: FarSide, database_url: str) -> None:
    voice = chatwoot_fixture("message_created_incoming_audio")
    voice["attachments"][0]["data_url"] = far_side.add_media("v", b"OggS voice:y que sea azul", "audio/ogg",
                                                             not_found_first=1)
    photo = chatwoot_fixture("message_created_incoming_image_caption")
    photo["attachments"][0]["data_url"] = far_side.add_media("p", b"\xff\xd8\xff jpeg", "image/jpeg")
    for payload in (chatwoot_fixture("message_created_incoming_text"), voice, photo):
        assert post(server, payload).json()["status"] == "buffered"
    settle(far_side, 1)
    assert far_side.replies[0]["body"]["content"] == (
        "echo: Hola, ¿hacen envíos a Monterrey? | [voice note, transcribed] y que sea azul | "
        "¿Lo tienen en talla 27? | <image>")

    # None of these may ever produce a reply.
    assert post(server, chatwoot_fixture("message_created_incoming_text")).json()["status"] == "duplicate"
    for name in ("message_created_outgoing_agent_bot", "message_created_private_note"):
        assert post(server, chatwoot_fixture(name)).json()["status"] == "ignored"
    assert post(server, chatwoot_fixture("message_created_incoming_text_conversation_open")).json()["status"] == "held"
    assert post(server, incoming(99001, "stale"), timestamp=int(time.time()) - 600).status_code == 401
    assert post(server, incoming(99002, "forged"), secret="guess").status_code == 401

    assert post(server, incoming(98300, "¿Cuánto cuesta el envío?")).status_code == 200
    settle(far_side, 2)
    # The message held while the conversation was open is history now (unanswered, so the fake
    # model, which echoes every customer text since our last reply, repeats it).
    assert far_side.replies[1]["body"]["content"] == "echo: ¿Siguen ahí? | ¿Cuánto cuesta el envío?"
    history = far_side.completions[1]["messages"]
    assert {"role": "assistant", "content": far_side.replies[0]["body"]["content"]} in history
    assert history[-1] == {"role": "user", "content": "¿Cuánto cuesta el envío?"}

    # A human agent answers (the conversation stays pending, as in Chatwoot CE): the bot goes quiet.
    assert post(server, chatwoot_fixture("message_created_outgoing_human_agent")).json()["status"] == "paused"
    assert post(server, incoming(98301, "Gracias Carlos")).json()["status"] == "held"
    settle(far_side, 2)
    rows = await buffers(database_url)
    assert [(r["status"], r["message_count"]) for r in rows] == [
        ("completed", 3), ("cancelled", 1), ("completed", 1), ("cancelled", 1), ("cancelled", 1)]


def test_serve_on_a_fresh_machine_uses_the_embedded_database(tmp_path: Any) -> None:
    """The README's main command: no DATABASE_URL, no OpenAI key, no Chatwoot."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "OPENAI", "CHATWOOT", "SUPABASE"))}
    env |= {"CHATBUFFER_DATA_DIR": str(tmp_path / "pgdata"), "BUFFER_WINDOW_SECONDS": "0.3",
            "BUFFER_MAX_AGE_SECONDS": "5", "SWEEP_INTERVAL_SECONDS": "1"}
    outputs: list[str] = []
    with chatbuffer_serve(env, outputs, timeout=60) as url:
        body = json.dumps(chatwoot_fixture("message_created_incoming_text")).encode()
        response = httpx.post(f"{url}/webhooks/chatwoot", content=body, headers={"content-type": "application/json"})
        assert response.json()["status"] == "buffered"
        time.sleep(2.5)  # the window ends and the in-process sweeper answers
    output = outputs[0]
    # The first screen: the addresses and the mode, not the embedded database's start-up chatter.
    assert f"playground   {url}/playground" in output and f"inspector    {url}/admin#token=" in output
    assert "embedded PostgreSQL (no DATABASE_URL)" in output and "offline placeholder" in output
    assert not [line for line in output.splitlines() if "INFO pgserver" in line], output
    assert "using the embedded PostgreSQL" in output
    assert "OFFLINE PLACEHOLDER" in output and "replies are printed to this console" in output
    assert "NEITHER CHATWOOT_WEBHOOK_SECRET NOR CHATWOOT_WEBHOOK_TOKEN" in output
    assert "[offline placeholder reply: no OPENAI_API_KEY] received 1 message(s)" in output
