from __future__ import annotations

import json

import httpx
import pytest
import respx

from shared.channels.chatwoot import (
    BadPayload, BadSignature, ChatwootClient, Ignored, parse_event, sign, verify_signature, verify_token,
)
from shared.models import InboundMessage
from tests.conftest import chatwoot_fixture

PENDING = frozenset({"pending"})
NOW = 1_776_697_400


def body_of(name: str) -> bytes:
    return json.dumps(chatwoot_fixture(name), ensure_ascii=False).encode()


# Each captured event kind and what the bot must make of it.
@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("message_created_incoming_text", "Hola, ¿hacen envíos a Monterrey?"),
        ("message_created_incoming_image_caption", "¿Lo tienen en talla 27?"),
        ("message_created_incoming_audio", None),
        ("message_created_incoming_text_conversation_open", Ignored("conversation status 'open'")),
        ("message_created_outgoing_agent_bot", Ignored("message_type 'outgoing'")),
        ("message_created_outgoing_human_agent", Ignored("message_type 'outgoing'")),
        ("message_created_private_note", Ignored("message_type 'outgoing'")),
        ("conversation_status_changed", Ignored("event 'conversation_status_changed'")),
    ],
)
def test_fixture_kinds(fixture: str, expected: object) -> None:
    parsed = parse_event(body_of(fixture), PENDING)
    if isinstance(expected, Ignored):
        assert parsed == expected
    else:
        assert isinstance(parsed, InboundMessage)
        assert parsed.content == expected


def test_incoming_message_identity_and_attachments() -> None:
    parsed = parse_event(body_of("message_created_incoming_audio"), PENDING)
    assert isinstance(parsed, InboundMessage)
    assert (parsed.channel, parsed.account_id, parsed.conversation_id, parsed.external_id) == (
        "chatwoot", "3", "431", "98232")
    assert parsed.attachments[0]["file_type"] == "audio"
    assert parsed.attachments[0]["content_type"] == "audio/ogg"
    assert parsed.sent_at is not None and parsed.sent_at.isoformat() == "2026-04-20T15:02:19.604000+00:00"


def test_private_incoming_note_and_phone_echo_are_ignored() -> None:
    note = chatwoot_fixture("message_created_incoming_text") | {"private": True}
    echo = chatwoot_fixture("message_created_incoming_text") | {"content_attributes": {"external_echo": True}}
    assert parse_event(json.dumps(note).encode(), PENDING) == Ignored("private note")
    assert isinstance(parse_event(json.dumps(echo).encode(), PENDING), Ignored)


def test_answer_statuses_are_configurable() -> None:
    parsed = parse_event(body_of("message_created_incoming_text_conversation_open"), frozenset({"pending", "open"}))
    assert isinstance(parsed, InboundMessage)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"event": "message_created", "message_type": "incoming"}', "missing object 'conversation'"),
        (json.dumps({"event": "message_created", "message_type": "incoming",
                     "conversation": {"status": "pending", "id": 1}, "id": 5}).encode(), "missing object 'account'"),
        (json.dumps({"event": "message_created", "message_type": "incoming", "account": {"id": 3},
                     "conversation": {"status": "pending"}, "id": 5}).encode(), "missing conversation.id"),
        (json.dumps({"event": "message_created", "message_type": "incoming", "account": {"id": 3},
                     "conversation": {"status": "pending", "id": 1}, "id": 5, "content": 7}).encode(),
         "content is not text"),
    ],
)
def test_bad_payloads_say_what_is_wrong(body: bytes, error: str) -> None:
    with pytest.raises(BadPayload, match=error):
        parse_event(body, PENDING)


def test_signature_over_raw_bytes() -> None:
    body = body_of("message_created_incoming_text")
    verify_signature("s3cret", str(NOW), sign("s3cret", str(NOW), body), body, now=NOW)
    # Re-serialised JSON is different bytes: the signature must not match it.
    reserialised = json.dumps(json.loads(body)).encode()
    with pytest.raises(BadSignature, match="does not match"):
        verify_signature("s3cret", str(NOW), sign("s3cret", str(NOW), body), reserialised, now=NOW)


def test_signature_known_vector() -> None:
    # HMAC-SHA256("secret", "1700000000.{}") computed independently with openssl.
    assert sign("secret", "1700000000", b"{}") == (
        "sha256=" + __import__("hmac").new(b"secret", b"1700000000.{}", "sha256").hexdigest())


@pytest.mark.parametrize(
    ("timestamp", "signature", "now", "error"),
    [
        (None, "sha256=00", NOW, "missing"),
        (str(NOW), None, NOW, "missing"),
        ("yesterday", "sha256=00", NOW, "unix seconds"),
        (str(NOW - 301), "GOOD", NOW, "off"),
        (str(NOW + 301), "GOOD", NOW, "off"),
        (str(NOW), "sha256=" + "0" * 64, NOW, "does not match"),
    ],
)
def test_bad_signatures_are_refused(timestamp: str | None, signature: str | None, now: int, error: str) -> None:
    body = b'{"event":"message_created"}'
    if signature == "GOOD":
        signature = sign("s3cret", timestamp or "", body)
    with pytest.raises(BadSignature, match=error):
        verify_signature("s3cret", timestamp, signature, body, now=now)


def test_url_token() -> None:
    verify_token("tok-123", "tok-123")
    for given in (None, "", "tok-12", "tok-1234"):
        with pytest.raises(BadSignature):
            verify_token("tok-123", given)


@respx.mock
async def test_client_posts_public_outgoing_reply_with_marker() -> None:
    route = respx.post("https://chat.example/api/v1/accounts/3/conversations/431/messages").mock(
        return_value=httpx.Response(200, json={"id": 1}))
    async with httpx.AsyncClient() as http:
        await ChatwootClient("https://chat.example/", "tok", http).post_reply("3", "431", "¡Hola!", 77)
    request = route.calls.last.request
    assert request.headers["api_access_token"] == "tok"
    assert json.loads(request.content) == {
        "content": "¡Hola!", "message_type": "outgoing", "private": False, "content_type": "text",
        "content_attributes": {"chatbuffer_buffer_id": 77}}


@respx.mock
async def test_client_typing_and_errors() -> None:
    typing = respx.post("https://chat.example/api/v1/accounts/3/conversations/431/toggle_typing_status").mock(
        return_value=httpx.Response(200, json={}))
    respx.post("https://chat.example/api/v1/accounts/3/conversations/431/messages").mock(
        return_value=httpx.Response(422, json={"error": "nope"}))
    async with httpx.AsyncClient() as http:
        client = ChatwootClient("https://chat.example", "tok", http)
        await client.set_typing("3", "431", True)
        await client.set_typing("3", "431", False)
        with pytest.raises(httpx.HTTPStatusError):
            await client.post_reply("3", "431", "x", 1)
    assert [json.loads(c.request.content)["typing_status"] for c in typing.calls] == ["on", "off"]
