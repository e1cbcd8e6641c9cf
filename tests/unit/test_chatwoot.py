from __future__ import annotations

import json

import httpx
import pytest
import respx

from shared.channels.chatwoot import (
    REPLY_MARKER, BadPayload, BadSignature, ChatwootClient, Ignored, MediaUnavailable, fetch_attachment, parse_event,
    sign, verify_signature, verify_token,
)
from shared.models import ConversationSignal, HumanMessage, InboundMessage, MessageEdit, ReplyEcho
from tests.conftest import FIXTURES, chatwoot_fixture

PENDING = frozenset({"pending"})
NOW = 1_776_697_400


def body_of(name: str) -> bytes:
    """The captured payload as captured (its own created_at): the parser's input."""
    return (FIXTURES / "chatwoot" / f"{name}.json").read_bytes()


# Each captured event kind and what the bot must make of it.
@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("message_created_incoming_text", "Hola, ¿hacen envíos a Monterrey?"),
        ("message_created_incoming_image_caption", "¿Lo tienen en talla 27?"),
        ("message_created_incoming_audio", None),
        ("message_created_incoming_location", None),
        ("message_created_incoming_contact", "João Souza"),
        ("message_created_incoming_sticker", None),
        ("message_created_incoming_reply_to", "Esse mesmo! Pode separar pra mim?"),
        ("message_created_outgoing_agent_bot", Ignored("outgoing message from agent_bot")),
        ("message_created_private_note", Ignored("private note")),
        ("webwidget_triggered", Ignored("event 'webwidget_triggered'")),
    ],
)
def test_fixture_kinds(fixture: str, expected: object) -> None:
    parsed = parse_event(body_of(fixture), PENDING)
    if isinstance(expected, Ignored):
        assert parsed == expected
    else:
        assert isinstance(parsed, InboundMessage) and parsed.hold_reason is None
        assert parsed.content == expected


def test_incoming_message_identity_and_attachments() -> None:
    parsed = parse_event(body_of("message_created_incoming_audio"), PENDING)
    assert isinstance(parsed, InboundMessage)
    assert (parsed.channel, parsed.account_id, parsed.conversation_id, parsed.external_id, parsed.inbox_id) == (
        "chatwoot", "3", "431", "98232", "12")
    assert parsed.attachments[0]["file_type"] == "audio"
    assert parsed.attachments[0]["content_type"] == "audio/ogg"
    assert parsed.attachments[0]["data_url"].startswith("https://chat.acme.mx/rails/active_storage/blobs/redirect/")
    assert parsed.sent_at is not None and parsed.sent_at.isoformat() == "2026-04-20T15:02:19.604000+00:00"


def test_location_and_contact_keep_what_the_model_needs() -> None:
    location = parse_event(body_of("message_created_incoming_location"), PENDING)
    contact = parse_event(body_of("message_created_incoming_contact"), PENDING)
    assert isinstance(location, InboundMessage) and isinstance(contact, InboundMessage)
    assert location.attachments[0] == {"file_type": "location", "coordinates_lat": -23.561414,
                                       "coordinates_long": -46.655881, "fallback_title": ""}
    assert contact.attachments[0] == {"file_type": "contact", "fallback_title": "+55 11 91234-5678",
                                      "meta": {"firstName": "João", "lastName": "Souza"}}


def test_a_status_that_is_not_the_bots_is_stored_but_held() -> None:
    parsed = parse_event(body_of("message_created_incoming_text_conversation_open"), PENDING)
    assert isinstance(parsed, InboundMessage)
    assert parsed.hold_reason == "conversation status is 'open', not the bot's"


def test_answer_statuses_are_configurable() -> None:
    parsed = parse_event(body_of("message_created_incoming_text_conversation_open"), frozenset({"pending", "open"}))
    assert isinstance(parsed, InboundMessage) and parsed.hold_reason is None


# --- humans and statuses ---------------------------------------------------------------------

def test_a_human_agents_reply_is_a_takeover_carrying_the_message() -> None:
    parsed = parse_event(body_of("message_created_outgoing_human_agent"), PENDING)
    assert isinstance(parsed, ConversationSignal)
    assert (parsed.kind, parsed.account_id, parsed.conversation_id, parsed.inbox_id) == ("takeover", "3", "431", "12")
    assert parsed.reason == "a human agent replied"
    assert parsed.message == HumanMessage("98241", "Hola, soy Carlos, te ayudo yo.", parsed.at, ())
    assert parsed.at is not None and parsed.at.isoformat() == "2026-04-20T15:04:10+00:00"


def test_a_reply_typed_on_the_phone_is_a_takeover() -> None:
    parsed = parse_event(body_of("message_created_outgoing_external_echo"), PENDING)
    assert isinstance(parsed, ConversationSignal) and parsed.kind == "takeover"
    assert parsed.reason == "the business replied from the phone"
    assert parsed.message is not None and parsed.message.content == "Já te mando o link"


def test_our_own_reply_echoed_back_is_never_a_takeover() -> None:
    """It is proof that the reply left: the burst named by our marker, and Chatwoot's message id."""
    echo = chatwoot_fixture("message_created_outgoing_agent_bot") | {"content_attributes": {REPLY_MARKER: 41}}
    expected = ReplyEcho("chatwoot", "3", 41, str(echo["id"]))
    assert parse_event(json.dumps(echo).encode(), PENDING) == expected
    # Even with a human-looking sender, our marker wins: it is ours.
    forged = echo | {"sender": {"id": 2, "type": "user"}}
    assert parse_event(json.dumps(forged).encode(), PENDING) == expected
    for marker in ("abc", None, [], -4, "9" * 30):  # a marker that names no burst: still ours, nothing to note
        odd = echo | {"content_attributes": {REPLY_MARKER: marker}}
        assert parse_event(json.dumps(odd).encode(), PENDING) == Ignored("our own reply")


@pytest.mark.parametrize(("fixture", "kind", "account"), [
    ("conversation_status_changed", "takeover", None),  # no messages: the account is unknown here
    ("conversation_opened", "takeover", "3"),  # its latest message carries the account
    ("conversation_resolved", "resolved", "3"),
])
def test_conversation_events_carry_no_account_object(fixture: str, kind: str, account: str | None) -> None:
    parsed = parse_event(body_of(fixture), PENDING)
    assert isinstance(parsed, ConversationSignal)
    assert (parsed.kind, parsed.account_id) == (kind, account)
    assert parsed.inbox_id is not None and parsed.at is not None and parsed.message is None


def test_back_to_pending_resumes_only_when_the_status_changed() -> None:
    event = chatwoot_fixture("conversation_status_changed") | {"status": "pending"}
    changed = parse_event(json.dumps(event).encode(), PENDING)
    assert isinstance(changed, ConversationSignal) and changed.kind == "returned_to_bot"
    label_added = event | {"event": "conversation_updated", "changed_attributes": [{"labels": {}}]}
    assert isinstance(parse_event(json.dumps(label_added).encode(), PENDING), Ignored)
    status_set = label_added | {"changed_attributes": [{"status": {"previous_value": "open", "current_value": "pending"}}]}
    parsed = parse_event(json.dumps(status_set).encode(), PENDING)
    assert isinstance(parsed, ConversationSignal) and parsed.kind == "returned_to_bot"


def test_message_updated_is_an_edit_of_a_customer_message() -> None:
    parsed = parse_event(body_of("message_updated_transcription"), PENDING)
    assert isinstance(parsed, MessageEdit)
    assert (parsed.account_id, parsed.external_id) == ("3", "88802")
    assert parsed.attachments[0]["transcribed_text"].startswith("Oi, eu queria saber")


# --- lenient reading after a valid signature -----------------------------------------------------

def test_null_attachments_are_skipped() -> None:
    event = chatwoot_fixture("message_created_incoming_audio")
    event["attachments"] = [None, *event["attachments"], "junk"]
    parsed = parse_event(json.dumps(event).encode(), PENDING)
    assert isinstance(parsed, InboundMessage) and [a["file_type"] for a in parsed.attachments] == ["audio"]


@pytest.mark.parametrize(("created_at", "expected"), [
    ("2026-04-20T15:02:11.431Z", "2026-04-20T15:02:11.431000+00:00"),
    ("2020-03-03 13:05:57 UTC", "2020-03-03T13:05:57+00:00"),  # older Chatwoot and its docs
    (1776697331, "2026-04-20T15:02:11+00:00"),
    ("last tuesday", None),  # the database stamps the arrival time
    (None, None),
])
def test_timestamps_in_every_form_chatwoot_has_used(created_at: object, expected: str | None) -> None:
    event = chatwoot_fixture("message_created_incoming_text") | {"created_at": created_at}
    parsed = parse_event(json.dumps(event).encode(), PENDING)
    assert isinstance(parsed, InboundMessage)
    assert (parsed.sent_at.isoformat() if parsed.sent_at else None) == expected


def test_ids_given_as_strings_and_odd_content() -> None:
    event = chatwoot_fixture("message_created_incoming_text") | {"id": " 98231 ", "content": 27,
                                                                  "account": {"id": "3"}}
    event["conversation"] = event["conversation"] | {"id": "431"}
    parsed = parse_event(json.dumps(event).encode(), PENDING)
    assert isinstance(parsed, InboundMessage)
    assert (parsed.external_id, parsed.account_id, parsed.conversation_id, parsed.content) == ("98231", "3", "431", "27")


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
        (json.dumps({"event": "message_created", "message_type": "incoming", "account": {"id": True},
                     "conversation": {"status": "pending", "id": 1}, "id": 5}).encode(), "missing account.id"),
    ],
)
def test_truly_unreadable_payloads_say_what_is_wrong(body: bytes, error: str) -> None:
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


@respx.mock
async def test_client_hands_off_by_opening_and_leaving_a_private_note() -> None:
    status = respx.post("https://chat.example/api/v1/accounts/3/conversations/431/toggle_status").mock(
        return_value=httpx.Response(200, json={}))
    note = respx.post("https://chat.example/api/v1/accounts/3/conversations/431/messages").mock(
        return_value=httpx.Response(200, json={"id": 2}))
    async with httpx.AsyncClient() as http:
        await ChatwootClient("https://chat.example", "tok", http).hand_off("3", "431", "wants a refund", 77)
    assert json.loads(status.calls.last.request.content) == {"status": "open"}
    assert json.loads(note.calls.last.request.content) == {
        "content": "Handed off by the bot: wants a refund", "message_type": "outgoing", "private": True,
        "content_type": "text", "content_attributes": {"chatbuffer_buffer_id": 77}}


@respx.mock
async def test_media_404_then_redirect_is_retried_and_followed_without_credentials() -> None:
    url = "https://chat.example/rails/active_storage/blobs/redirect/abc/audio.ogg"
    redirect = respx.get(url).mock(side_effect=[
        httpx.Response(404), httpx.Response(302, headers={"location": "https://storage.example/abc"})])
    respx.get("https://storage.example/abc").mock(
        return_value=httpx.Response(200, content=b"OggS...", headers={"content-type": "audio/ogg"}))
    async with httpx.AsyncClient() as http:
        data, content_type = await fetch_attachment(http, url, max_bytes=1000, allowed_hosts=frozenset({"chat.example"}),
                                                    retry_delays=(0.01,))
    assert (data, content_type) == (b"OggS...", "audio/ogg")
    assert redirect.call_count == 2 and "api_access_token" not in redirect.calls.last.request.headers


@respx.mock
async def test_media_refuses_foreign_hosts_oversize_and_gives_up_after_its_retries() -> None:
    respx.get("https://chat.example/big").mock(return_value=httpx.Response(200, content=b"x" * 2000))
    missing = respx.get("https://chat.example/missing").mock(return_value=httpx.Response(404))
    async with httpx.AsyncClient() as http:
        with pytest.raises(MediaUnavailable, match="not one of Chatwoot.s hosts"):
            await fetch_attachment(http, "https://169.254.169.254/latest", max_bytes=10, allowed_hosts=frozenset({"chat.example"}))
        with pytest.raises(MediaUnavailable, match="limit"):
            await fetch_attachment(http, "https://chat.example/big", max_bytes=1000, allowed_hosts=frozenset({"chat.example"}))
        with pytest.raises(MediaUnavailable, match="HTTP 404 after 3 attempts"):
            await fetch_attachment(http, "https://chat.example/missing", max_bytes=10, retry_delays=(0.01, 0.01))
    assert missing.call_count == 3


@respx.mock
async def test_media_hosts_besides_the_api_host() -> None:
    # Chatwoot reached on an internal address; its data_urls carry the public one.
    respx.get("https://chat.public.example/rails/active_storage/blobs/redirect/k/a.ogg").mock(
        return_value=httpx.Response(200, content=b"OggS"))
    async with httpx.AsyncClient() as http:
        internal = ChatwootClient("http://chatwoot-web:3000", "tok", http)
        with pytest.raises(MediaUnavailable, match="CHATWOOT_MEDIA_HOSTS"):
            await internal.fetch_media({"data_url": "https://chat.public.example/rails/active_storage/blobs/redirect/k/a.ogg"},
                                       max_bytes=10)
        allowed = ChatwootClient("http://chatwoot-web:3000", "tok", http, frozenset({"chat.public.example"}))
        data, _ = await allowed.fetch_media(
            {"data_url": "https://chat.public.example/rails/active_storage/blobs/redirect/k/a.ogg"}, max_bytes=10)
    assert data == b"OggS"
