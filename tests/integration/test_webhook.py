"""POST /webhooks/chatwoot: what is stored, what is refused, what is ignored."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from typing import Any, AsyncIterator

import httpx
import pytest

from shared.config import Settings
from shared.runtime import Runtime
from shared.web.app import MAX_BODY_BYTES, create_app
from tests.conftest import WEBHOOK_SECRET, chatwoot_fixture, incoming, signed_headers
from tests.support.sql import buffers, execute, fetch

URL = "/webhooks/chatwoot"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(settings) as client:
        yield client


@contextlib.asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(settings)
    transport = httpx.ASGITransport(app=create_app(runtime))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await runtime.close()


async def post(client: httpx.AsyncClient, payload: dict[str, Any] | bytes, **kwargs: Any) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
    headers = kwargs.pop("headers", None) or signed_headers(body)
    return await client.post(URL, content=body, headers=headers, **kwargs)


async def stored(database_url: str) -> int:
    return (await fetch(database_url, "select count(*) as n from public.buffered_messages"))[0]["n"]


async def test_signed_fixtures_are_buffered_and_redelivery_is_a_no_op(client: httpx.AsyncClient, database_url: str) -> None:
    for name in ("message_created_incoming_text", "message_created_incoming_audio",
                 "message_created_incoming_image_caption"):
        response = await post(client, chatwoot_fixture(name))
        assert response.status_code == 200 and response.json()["status"] == "buffered", response.text
    again = await post(client, chatwoot_fixture("message_created_incoming_text"))
    assert again.json()["status"] == "duplicate"
    (row,) = await buffers(database_url)
    assert row["message_count"] == 3 and await stored(database_url) == 3


@pytest.mark.parametrize("fixture", [
    "message_created_outgoing_agent_bot", "message_created_private_note", "webwidget_triggered",
])
async def test_non_customer_events_are_acknowledged_and_not_stored(
    client: httpx.AsyncClient, database_url: str, fixture: str
) -> None:
    response = await post(client, chatwoot_fixture(fixture))
    assert response.status_code == 200 and response.json()["status"] == "ignored"
    assert await buffers(database_url) == []


async def test_a_message_in_a_conversation_that_is_not_the_bots_is_kept_unanswered(
    client: httpx.AsyncClient, database_url: str
) -> None:
    response = await post(client, chatwoot_fixture("message_created_incoming_text_conversation_open"))
    assert response.status_code == 200 and response.json()["status"] == "held"
    (row,) = await buffers(database_url)
    assert row["status"] == "cancelled" and row["cancel_reason"] == "conversation status is 'open', not the bot's"


@pytest.mark.parametrize(("headers", "error"), [
    ({}, "missing"),
    ({"x-chatwoot-timestamp": "TS", "x-chatwoot-signature": "sha256=" + "0" * 64}, "does not match"),
    ("wrong-secret", "does not match"),
    ("stale", "off"),
])
async def test_bad_or_stale_signatures_get_401_and_store_nothing(
    client: httpx.AsyncClient, database_url: str, headers: Any, error: str
) -> None:
    body = json.dumps(chatwoot_fixture("message_created_incoming_text")).encode()
    if headers == "wrong-secret":
        headers = signed_headers(body, secret="not-the-secret")
    elif headers == "stale":
        headers = signed_headers(body, timestamp=int(time.time()) - 301)
    else:
        headers = {k: v.replace("TS", str(int(time.time()))) for k, v in headers.items()}
    response = await client.post(URL, content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == 401 and error in response.json()["error"]
    assert await buffers(database_url) == []


async def test_url_token_when_no_secret(settings: Settings, database_url: str) -> None:
    settings = dataclasses.replace(settings, chatwoot_webhook_secret=None, chatwoot_webhook_token="tok-xyz")
    body = json.dumps(chatwoot_fixture("message_created_incoming_text")).encode()
    async with _client(settings) as client:
        refused = await client.post(URL + "?token=nope", content=body)
        accepted = await client.post(URL + "?token=tok-xyz", content=body)
    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert await stored(database_url) == 1


async def test_no_auth_configured_warns_loudly(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        create_app(Runtime(dataclasses.replace(settings, chatwoot_webhook_secret=None)))
    assert "NEITHER CHATWOOT_WEBHOOK_SECRET NOR CHATWOOT_WEBHOOK_TOKEN" in caplog.text


@pytest.mark.parametrize(("body", "error"), [
    (b"{oops", "not JSON"),
    (json.dumps({"event": "message_created", "message_type": "incoming", "private": False,
                 "conversation": {"status": "pending"}}).encode(), "missing"),
])
async def test_unreadable_signed_bodies_are_kept_as_dead_letters_and_acknowledged(
    client: httpx.AsyncClient, database_url: str, body: bytes, error: str
) -> None:
    # A 4xx would make Chatwoot hand the customer to a human: keep it for an operator instead.
    response = await post(client, body)
    assert response.status_code == 200 and response.json()["status"] == "unreadable"
    assert error in response.json()["error"]
    (letter,) = await fetch(database_url, "select * from public.webhook_dead_letters")
    assert letter["id"] == response.json()["dead_letter_id"]
    assert bytes(letter["body"]) == body and letter["body_size"] == len(body) and error in letter["reason"]
    assert await buffers(database_url) == []


async def test_a_dead_letter_keeps_at_most_64_kb(client: httpx.AsyncClient, database_url: str) -> None:
    body = b"\xff" + b"x" * 100_000  # not even UTF-8
    response = await post(client, body)
    assert response.json()["status"] == "unreadable"
    (letter,) = await fetch(database_url, "select body, body_size from public.webhook_dead_letters")
    assert len(letter["body"]) == 65536 and letter["body_size"] == len(body) and bytes(letter["body"]) == body[:65536]


async def test_bad_signature_on_an_unreadable_body_is_401_and_keeps_nothing(
    client: httpx.AsyncClient, database_url: str
) -> None:
    response = await client.post(URL, content=b"{oops", headers=signed_headers(b"{oops", secret="guess"))
    assert response.status_code == 401
    assert await fetch(database_url, "select * from public.webhook_dead_letters") == []


async def test_odd_fields_in_a_signed_message_never_get_a_4xx(client: httpx.AsyncClient, database_url: str) -> None:
    payload = chatwoot_fixture("message_created_incoming_audio")
    # Older Chatwoot's time format (this very second, so it is not stale).
    sent = time.gmtime()
    payload.update(id="98232", created_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", sent),
                   attachments=[None, *payload["attachments"]])
    response = await post(client, payload)
    assert response.status_code == 200 and response.json()["status"] == "buffered"
    (message,) = await fetch(database_url, "select sent_at, attachments from public.buffered_messages")
    assert message["sent_at"].isoformat() == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", sent)
    assert [a["file_type"] for a in json.loads(message["attachments"])] == ["audio"]


async def test_an_edit_updates_a_waiting_message_only(client: httpx.AsyncClient, database_url: str) -> None:
    await post(client, chatwoot_fixture("message_created_incoming_audio") | {"id": 88802})
    edit = chatwoot_fixture("message_updated_transcription")  # Chatwoot adds its transcription
    response = await post(client, edit)
    assert response.json()["status"] == "edit updated"
    (message,) = await fetch(database_url, "select attachments from public.buffered_messages")
    assert json.loads(message["attachments"])[0]["transcribed_text"].startswith("Oi, eu queria saber")
    assert (await post(client, edit)).json()["status"] == "edit unchanged"
    await execute(database_url, "update public.message_buffer set status = 'completed'")
    assert (await post(client, edit | {"content": "changed later"})).json()["status"] == "edit not_waiting"
    unknown = edit | {"id": 1}
    assert (await post(client, unknown)).json()["status"] == "edit unknown"


async def test_body_over_1mb_gets_413(client: httpx.AsyncClient, database_url: str) -> None:
    payload = incoming(1, "x" * (MAX_BODY_BYTES + 10))
    response = await post(client, payload)
    assert response.status_code == 413
    async def chunks() -> AsyncIterator[bytes]:  # no content-length: read up to the limit, then cut
        for _ in range(11):
            yield b"x" * 100_000

    streamed = await client.post(URL, content=chunks(), headers=signed_headers(b""))
    assert streamed.status_code == 413
    assert await buffers(database_url) == []


async def test_database_down_gets_500_so_chatwoot_retries(settings: Settings) -> None:
    down = dataclasses.replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none")
    async with _client(down) as client:
        response = await post(client, chatwoot_fixture("message_created_incoming_text"))
    assert response.status_code == 500 and "retry" in response.json()["error"]


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_sweep_endpoint_needs_its_bearer_token(client: httpx.AsyncClient) -> None:
    assert (await client.post("/sweep")).status_code == 401
    assert (await client.post("/sweep", headers={"authorization": "Bearer nope"})).status_code == 401
    ok = await client.post("/sweep", headers={"authorization": "Bearer test-sweep-token"})
    assert ok.status_code == 202


async def test_no_personal_data_at_info(
    client: httpx.AsyncClient, settings: Settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.support.sql import make_due

    with caplog.at_level(logging.INFO):
        await post(client, chatwoot_fixture("message_created_incoming_text"))
        await make_due(database_url)
        runtime = Runtime(settings)
        await runtime.new_sweeper().run_once()
        await runtime.close()
    text = caplog.text
    assert "completed" in text  # INFO logging did happen
    for secret in ("Monterrey", "María", "+5215512345678", "5215512345678", WEBHOOK_SECRET):
        assert secret not in text


async def test_nul_characters_are_dropped_and_a_data_error_is_a_dead_letter(
    client: httpx.AsyncClient, database_url: str
) -> None:
    # PostgreSQL's text refuses NUL; Chatwoot would get a 500 three times, then hand off.
    payload = incoming(1, "hola\u0000 ¿están?")
    payload["attachments"] = [{"file_type": "location", "fallback_title": "Av.\u0000 Paulista"}]
    assert (await post(client, payload)).json()["status"] == "buffered"
    (message,) = await fetch(database_url, "select content, attachments from public.buffered_messages")
    assert message["content"] == "hola ¿están?" and json.loads(message["attachments"])[0]["fallback_title"] == "Av. Paulista"
    # An id the database cannot store: a retry would fail the same way, so it is kept, not refused.
    response = await post(client, incoming(1, "x") | {"id": "98\u0000231"})
    assert response.status_code == 200 and response.json()["status"] == "unreadable"
    assert "refused its data" in response.json()["error"]


async def test_mutated_payloads_never_answer_500_and_refused_ones_store_nothing(bot: Bot, database_url: str) -> None:
    """Through the whole app and the database: every field of every fixture given a value of
    another type (seeded, 300 cases) is answered 200; the same bodies with a wrong signature are
    answered 401 and leave no row."""
    import random

    from tests.support.sql import fetch
    from tests.unit.test_fuzz_chatwoot import FIXTURE_NAMES, paths, replaced

    rng = random.Random(20261124)
    odd = [None, True, -1, 10**40, 1e308, "", "x" * 5000, "\x00", [], [None], {}, {"a": [1, {"b": None}]}, "é\U0010ffff"]
    refused = []
    for case in range(300):
        name = rng.choice(FIXTURE_NAMES)
        document = chatwoot_fixture(name)
        body = json.dumps(replaced(document, rng.choice(paths(document)), rng.choice(odd))).encode()
        response = await bot.post(body)
        assert response.status_code == 200, (name, body[:300], response.text)
        refused.append(body)
    before = await fetch(database_url, "select (select count(*) from public.buffered_messages) as messages,"
                                       " (select count(*) from public.webhook_dead_letters) as dead,"
                                       " (select count(*) from public.conversation_state) as conversations")
    for body in refused[:100]:
        response = await bot.post(body, headers=signed_headers(body, secret="not-the-secret"))
        assert response.status_code == 401
    after = await fetch(database_url, "select (select count(*) from public.buffered_messages) as messages,"
                                      " (select count(*) from public.webhook_dead_letters) as dead,"
                                      " (select count(*) from public.conversation_state) as conversations")
    assert after == before
