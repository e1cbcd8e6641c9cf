"""Unit tests of the direct channel adapters (WhatsApp Cloud API, Messenger/Instagram, Twilio) and
the router that splits and posts replies: signatures with the platforms' documented vectors,
handshakes, parsing of captured payloads (tests/fixtures/{whatsapp,meta,twilio}), the long-reply
splitter, the HTTP clients against respx fakes, and the router's ordered posting. No database.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Mapping
from urllib.parse import parse_qs, parse_qsl, quote, urlencode

import httpx
import pytest
import respx
from hypothesis import example, given
from hypothesis import strategies as st

from shared.channels import graph, meta, twilio, whatsapp
from shared.channels.base import (
    BadPayload, BadSignature, MediaTooLarge, MediaUnavailable, PermanentSendError, WebhookRequest, download,
    read_capped,
)
from shared.channels.meta import MetaClient
from shared.channels.router import ChannelRouter, PartlySent, split_reply
from shared.channels.twilio import TwilioClient
from shared.channels.whatsapp import WhatsAppClient
from shared.config import Settings
from shared.models import ClaimedBuffer, InboundMessage
from tests.conftest import FIXTURES

APP_SECRET = "test_app_secret"
GRAPH = "https://graph.facebook.com/v26.0"
TWILIO_API = "https://api.twilio.com"
TWILIO_SID = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
TWILIO_URL = "https://bot.example/webhooks/twilio"

# One set of Meta settings for both webhooks, with a distinct token each, so that a handshake
# answered with the other channel's token shows up as a failure.
META_SETTINGS = Settings(meta_app_secret=APP_SECRET, whatsapp_verify_token="wa-verify",
                         whatsapp_access_token="wa-token", meta_verify_token="meta-verify",
                         meta_page_access_token="page-token", instagram_access_token="ig-token")
TWILIO_SETTINGS = Settings(twilio_auth_token="12345", twilio_account_sid=TWILIO_SID)

# The vectors of ../shared/CHANNELS.md.
META_VECTOR_BODY = b'{"object":"whatsapp_business_account","entry":[]}'
META_VECTOR_SIGNATURE = "sha256=dec6a680679a968e7e0319355b23599cbfc54502c0784668e9618baa0c633756"
TWILIO_VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_VECTOR_PARAMS = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+12349013030"), ("Digits", "1234"),
                        ("From", "+12349013030"), ("To", "+18005551212")]
TWILIO_VECTOR_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def fixture(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def twilio_fixture(name: str) -> bytes:
    # The file ends with a newline, as text files do; Twilio's form body does not.
    return fixture(f"twilio/{name}").removesuffix(b"\n")


def meta_request(body: bytes, signature: str | None) -> WebhookRequest:
    headers = {} if signature is None else {"x-hub-signature-256": signature}
    return WebhookRequest(body, headers, {}, "https://bot.example/webhooks/meta")


def twilio_request(body: bytes, signature: str | None, url: str = TWILIO_URL) -> WebhookRequest:
    headers = {} if signature is None else {"x-twilio-signature": signature}
    return WebhookRequest(body, headers, {}, url)


def twilio_signature(body: bytes, url: str = TWILIO_URL, token: str = "12345") -> str:
    return twilio.sign(token, url, parse_qsl(body.decode(), keep_blank_values=True))


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# --- signatures -------------------------------------------------------------------------------------

def test_meta_signature_matches_the_documented_vector() -> None:
    assert graph.sign(APP_SECRET, META_VECTOR_BODY) == META_VECTOR_SIGNATURE
    graph.verify_signature([APP_SECRET], META_VECTOR_SIGNATURE, META_VECTOR_BODY)
    whatsapp.verify(META_SETTINGS, meta_request(META_VECTOR_BODY, META_VECTOR_SIGNATURE))


def test_twilio_signature_matches_the_documented_vector() -> None:
    assert twilio.sign("12345", TWILIO_VECTOR_URL, TWILIO_VECTOR_PARAMS) == TWILIO_VECTOR_SIGNATURE
    body = urlencode(TWILIO_VECTOR_PARAMS).encode()
    twilio.verify(TWILIO_SETTINGS, twilio_request(body, TWILIO_VECTOR_SIGNATURE, url=TWILIO_VECTOR_URL))


@pytest.mark.parametrize(("adapter", "path"), [
    (whatsapp, "whatsapp/text.json"),
    (whatsapp, "whatsapp/audio_voice.json"),
    (meta, "meta/messenger_text.json"),
    (meta, "meta/instagram_audio.json"),
])
def test_meta_family_accepts_the_right_signature_and_refuses_the_rest(adapter: Any, path: str) -> None:
    body = fixture(path)
    adapter.verify(META_SETTINGS, meta_request(body, graph.sign(APP_SECRET, body)))
    # Re-serialised JSON has other bytes (the fixture is indented; Meta's own bytes escape `/`),
    # so a signature over the original must not cover it.
    reserialised = json.dumps(json.loads(body)).encode()
    assert reserialised != body
    refused = [
        meta_request(body, graph.sign("another_secret", body)),
        meta_request(body, None),
        meta_request(body, ""),
        meta_request(body, "sha256=" + "0" * 64),
        meta_request(reserialised, graph.sign(APP_SECRET, body)),
        meta_request(body + b" ", graph.sign(APP_SECRET, body)),
    ]
    for request in refused:
        with pytest.raises(BadSignature):
            adapter.verify(META_SETTINGS, request)


def test_meta_signature_covers_the_escaped_bytes_not_the_decoded_json() -> None:
    # How Meta writes JSON: `/` as `\/` and non-ASCII as \u escapes.
    raw = (rb'{"object":"page","entry":[{"id":"106540352242922","time":1749416383000,"messaging":[{"sender":'
           rb'{"id":"24015973678123456"},"recipient":{"id":"106540352242922"},"timestamp":1749416382900,'
           rb'"message":{"mid":"m_1","text":"caf\u00e9 at https:\/\/example.com"}}]}]}')
    meta.verify(META_SETTINGS, meta_request(raw, graph.sign(APP_SECRET, raw)))
    for reserialised in (json.dumps(json.loads(raw), separators=(",", ":")),
                         json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)):
        assert reserialised.encode() != raw
        with pytest.raises(BadSignature):
            meta.verify(META_SETTINGS, meta_request(reserialised.encode(), graph.sign(APP_SECRET, raw)))
    assert meta.parse(META_SETTINGS, raw)[0].content == "café at https://example.com"


def test_instagram_signed_with_its_own_app_secret() -> None:
    body = fixture("meta/instagram_text.json")
    signed = meta_request(body, graph.sign("ig_app_secret", body))
    with pytest.raises(BadSignature):
        meta.verify(META_SETTINGS, signed)
    both = Settings(meta_app_secret=APP_SECRET, instagram_app_secret="ig_app_secret", meta_verify_token="mvt",
                    instagram_access_token="ig-token")
    meta.verify(both, signed)
    meta.verify(both, meta_request(body, graph.sign(APP_SECRET, body)))  # the Messenger app's secret still works


def test_whatsapp_does_not_take_the_instagram_secret() -> None:
    body = fixture("whatsapp/text.json")
    settings = Settings(meta_app_secret=APP_SECRET, instagram_app_secret="ig_app_secret",
                        whatsapp_verify_token="vt", whatsapp_access_token="tok")
    with pytest.raises(BadSignature):
        whatsapp.verify(settings, meta_request(body, graph.sign("ig_app_secret", body)))


@pytest.mark.parametrize("name", ["sms_text.form", "whatsapp_text.form", "whatsapp_voice.form"])
def test_twilio_accepts_the_right_signature_and_refuses_the_rest(name: str) -> None:
    body = twilio_fixture(name)
    twilio.verify(TWILIO_SETTINGS, twilio_request(body, twilio_signature(body)))
    params = parse_qsl(body.decode(), keep_blank_values=True)
    changed = urlencode([(k, "+19999999999" if k == "From" else v) for k, v in params]).encode()
    refused = [
        twilio_request(body, twilio_signature(body, token="another-token")),
        twilio_request(body, None),
        twilio_request(body, ""),
        twilio_request(changed, twilio_signature(body)),  # a parameter's value changed
        twilio_request(body, twilio_signature(body), url="https://bot.example/webhooks/other"),
        twilio_request(b"%%%not a form", twilio_signature(body)),
    ]
    for request in refused:
        with pytest.raises(BadSignature):
            twilio.verify(TWILIO_SETTINGS, request)


def test_twilio_signs_parameters_not_bytes() -> None:
    # The same parameters in another order and percent-encoding still verify.
    body = twilio_fixture("whatsapp_text.form")
    params = parse_qsl(body.decode(), keep_blank_values=True)
    reencoded = urlencode(list(reversed(params)), quote_via=quote).encode()  # %20 for spaces, not +
    assert reencoded != body
    twilio.verify(TWILIO_SETTINGS, twilio_request(reencoded, twilio_signature(body)))


def test_twilio_keeps_blank_values_in_the_signature() -> None:
    body = twilio_fixture("whatsapp_voice.form")
    assert b"&Body=&" in body
    # Signed here with Body="" included; a parser that dropped blanks would compute another HMAC.
    signature = twilio.sign("12345", TWILIO_URL, parse_qsl(body.decode(), keep_blank_values=True))
    assert signature != twilio.sign("12345", TWILIO_URL, parse_qsl(body.decode()))
    twilio.verify(TWILIO_SETTINGS, twilio_request(body, signature))


def test_twilio_verifies_against_the_public_webhook_url_when_set() -> None:
    body = twilio_fixture("sms_text.form")
    public = "https://public.example/webhooks/twilio"
    internal = "http://10.0.0.7:8000/webhooks/twilio"  # what the app sees behind the proxy
    settings = Settings(twilio_auth_token="12345", twilio_account_sid=TWILIO_SID, twilio_webhook_url=public)
    twilio.verify(settings, twilio_request(body, twilio_signature(body, url=public), url=internal))
    with pytest.raises(BadSignature):
        twilio.verify(settings, twilio_request(body, twilio_signature(body, url=internal), url=internal))


# --- handshakes -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("adapter", "token", "other_token"), [
    (whatsapp, "wa-verify", "meta-verify"),
    (meta, "meta-verify", "wa-verify"),
])
def test_handshake_answers_the_challenge_only_for_its_own_token(adapter: Any, token: str, other_token: str) -> None:
    good = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "1158201444"}
    assert adapter.handshake(META_SETTINGS, good) == "1158201444"
    refused = [
        {**good, "hub.verify_token": other_token},
        {**good, "hub.verify_token": ""},
        {key: value for key, value in good.items() if key != "hub.verify_token"},
        {**good, "hub.mode": "unsubscribe"},
        {key: value for key, value in good.items() if key != "hub.mode"},
        {key: value for key, value in good.items() if key != "hub.challenge"},
        {**good, "hub.challenge": ""},
    ]
    for query in refused:
        with pytest.raises(BadSignature):
            adapter.handshake(META_SETTINGS, query)


# --- parsing: WhatsApp ------------------------------------------------------------------------------

def wa_delivery(*messages: dict[str, Any], phone_number_id: str = "106540352242922") -> bytes:
    """A one-change WhatsApp delivery holding these messages."""
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
             "messages": list(messages)}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}]}).encode()


def wa_message(wamid: str, kind: str, body: Any, **extra: Any) -> dict[str, Any]:
    return {"from": "16505551234", "id": wamid, "timestamp": "1749416383", "type": kind, kind: body, **extra}


def test_whatsapp_text_fixture() -> None:
    assert whatsapp.parse(META_SETTINGS, fixture("whatsapp/text.json")) == [InboundMessage(
        channel="whatsapp", account_id="106540352242922", conversation_id="16505551234",
        external_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        content="Does it come in another color?", sent_at=at(1749416383))]


def test_whatsapp_voice_note_fixture_names_its_media_id() -> None:
    [message] = whatsapp.parse(META_SETTINGS, fixture("whatsapp/audio_voice.json"))
    assert (message.channel, message.account_id, message.conversation_id, message.external_id) == (
        "whatsapp", "106540352242922", "16505551234", "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQ0NUM3RkY2QkE1QjBDODdBMUQA")
    assert message.content is None
    assert message.sent_at == at(1749416390)
    assert message.attachments == ({"file_type": "audio", "media_id": "1037543291543636",
                                    "content_type": "audio/ogg; codecs=opus"},)


def test_whatsapp_status_is_not_a_message() -> None:
    assert whatsapp.parse(META_SETTINGS, fixture("whatsapp/status_delivered.json")) == []


@pytest.mark.parametrize(("message", "content", "attachments"), [
    (wa_message("wamid.img", "image", {"caption": "this one, in size 27?", "mime_type": "image/jpeg",
                                       "sha256": "abc=", "id": "1479537139650973"}),
     "this one, in size 27?",
     ({"file_type": "image", "media_id": "1479537139650973", "content_type": "image/jpeg"},)),
    (wa_message("wamid.loc", "location", {"latitude": 19.4326, "longitude": -99.1332, "name": "Zócalo",
                                          "address": "Plaza de la Constitución, CDMX"}),
     None,
     ({"file_type": "location", "coordinates_lat": 19.4326, "coordinates_long": -99.1332,
       "fallback_title": "Zócalo, Plaza de la Constitución, CDMX"},)),
    ({"from": "16505551234", "id": "wamid.card", "timestamp": "1749416383", "type": "contacts",
      "contacts": [{"name": {"formatted_name": "João Souza", "first_name": "João"},
                    "phones": [{"phone": "+55 11 91234-5678", "type": "CELL", "wa_id": "5511912345678"}]}]},
     None,
     ({"file_type": "contact", "meta": {"firstName": "João Souza"}, "fallback_title": "+55 11 91234-5678"},)),
    (wa_message("wamid.btn", "interactive", {"type": "button_reply",
                                             "button_reply": {"id": "book", "title": "Yes, book it"}}),
     "Yes, book it", ()),
    (wa_message("wamid.stk", "sticker", {"mime_type": "image/webp", "sha256": "def=", "id": "770011",
                                         "animated": False}),
     None,
     ({"file_type": "image", "media_id": "770011", "content_type": "image/webp"},)),
], ids=["image_with_caption", "location", "contacts", "interactive_button_reply", "sticker"])
def test_whatsapp_message_types(message: dict[str, Any], content: str | None,
                                attachments: tuple[dict[str, Any], ...]) -> None:
    [parsed] = whatsapp.parse(META_SETTINGS, wa_delivery(message))
    assert parsed.external_id == message["id"]
    assert (parsed.content, parsed.attachments) == (content, attachments)


def test_whatsapp_batched_delivery_yields_only_customer_messages_in_order() -> None:
    metadata = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}
    status = {"id": "wamid.ours", "status": "read", "timestamp": "1749416400", "recipient_id": "16505551234"}
    delivery = {"object": "whatsapp_business_account", "entry": [
        {"id": "102290129340398", "changes": [
            {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata,
                                            "statuses": [status]}},
            {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata, "messages": [
                wa_message("wamid.1", "text", {"body": "hi"}),
                wa_message("wamid.reaction", "reaction", {"message_id": "wamid.ours", "emoji": "👍"}),
                wa_message("wamid.2", "text", {"body": "are you open?"}),
            ]}},
            {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}},
        ]},
        {"id": "102290129340399", "changes": [
            {"field": "messages", "value": {"messaging_product": "whatsapp",
                                            "metadata": {**metadata, "phone_number_id": "106540352242999"},
                                            "statuses": [status],
                                            "messages": [wa_message("wamid.3", "text", {"body": "hello?"})]}},
        ]},
    ]}
    parsed = whatsapp.parse(META_SETTINGS, json.dumps(delivery).encode())
    assert [(m.account_id, m.external_id, m.content) for m in parsed] == [
        ("106540352242922", "wamid.1", "hi"), ("106540352242922", "wamid.2", "are you open?"),
        ("106540352242999", "wamid.3", "hello?")]


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    b'{"object":"page","entry":[]}',
    b'{"entry":[]}',
    wa_delivery({"from": "16505551234", "timestamp": "1749416383", "type": "text", "text": {"body": "no id"}}),
])
def test_whatsapp_refuses_what_is_not_its_delivery(body: bytes) -> None:
    with pytest.raises(BadPayload):
        whatsapp.parse(META_SETTINGS, body)


# --- parsing: Messenger and Instagram ---------------------------------------------------------------

def test_messenger_text_fixture() -> None:
    assert meta.parse(META_SETTINGS, fixture("meta/messenger_text.json")) == [InboundMessage(
        channel="messenger", account_id="106540352242922", conversation_id="24015973678123456",
        external_id="m_AbC1dEf2GhI3jKl4MnO5pQr6StU7vWx8", content="hi, is this open today?",
        sent_at=at(1749416382.9))]


def test_instagram_text_fixture() -> None:
    assert meta.parse(META_SETTINGS, fixture("meta/instagram_text.json")) == [InboundMessage(
        channel="instagram", account_id="17841400000000000", conversation_id="978239761327698",
        external_id="aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx", content="price?", sent_at=at(1749416382))]


@pytest.mark.parametrize(("path", "channel", "url"), [
    ("meta/messenger_audio.json", "messenger",
     "https://cdn.fbsbx.com/v/t59.3654-21/000000_n.mp4/audioclip-1749416389.mp4?oh=00_x&oe=6850AB12"),
    ("meta/instagram_audio.json", "instagram",
     "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=17905817880029000&signature=Abx-9mHV"),
])
def test_meta_audio_fixtures_carry_the_cdn_url(path: str, channel: str, url: str) -> None:
    [message] = meta.parse(META_SETTINGS, fixture(path))
    assert message.channel == channel
    assert message.content is None
    assert message.sent_at == at(1749416390)
    assert message.attachments == ({"file_type": "audio", "data_url": url},)


def test_messenger_echo_of_our_own_reply_is_not_a_message() -> None:
    assert meta.parse(META_SETTINGS, fixture("meta/messenger_echo.json")) == []


def test_meta_batched_delivery_yields_only_customer_messages_in_order() -> None:
    page, person = {"id": "106540352242922"}, {"id": "24015973678123456"}

    def item(**kind: Any) -> dict[str, Any]:
        return {"sender": person, "recipient": page, "timestamp": 1749416382900, **kind}

    delivery = {"object": "page", "entry": [
        {"id": "106540352242922", "time": 1749416383000, "messaging": [
            item(message={"mid": "m_1", "text": "hi"}),
            item(delivery={"mids": ["m_ours"], "watermark": 1749416382000}),
            item(read={"watermark": 1749416382000}),
            {"sender": page, "recipient": person, "timestamp": 1749416383000,
             "message": {"is_echo": True, "app_id": 1517776481860111, "mid": "m_echo", "text": "our reply"}},
        ]},
        {"id": "106540352242922", "time": 1749416384000, "messaging": [
            item(reaction={"mid": "m_ours", "action": "react", "emoji": "❤️", "reaction": "love"}),
            item(message={"mid": "m_2", "text": "do you deliver?"}),
            item(postback={"mid": "m_pb", "title": "Get Started", "payload": "START"}),
            item(message={"mid": "m_3", "text": "to Monterrey"}),
        ]},
    ]}
    parsed = meta.parse(META_SETTINGS, json.dumps(delivery).encode())
    assert [(m.external_id, m.content) for m in parsed] == [
        ("m_1", "hi"), ("m_2", "do you deliver?"), ("m_3", "to Monterrey")]


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    b'{"object":"whatsapp_business_account","entry":[]}',
    b'{"entry":[]}',
    b'{"object":"page","entry":[{"messaging":[{"recipient":{"id":"1"},"message":{"mid":"m_1","text":"no sender"}}]}]}',
])
def test_meta_refuses_what_is_not_its_delivery(body: bytes) -> None:
    with pytest.raises(BadPayload):
        meta.parse(META_SETTINGS, body)


@pytest.mark.parametrize("body", [b'{"object":["page"],"entry":[]}', b'{"object":{},"entry":[]}'])
def test_meta_refuses_a_non_string_object(body: bytes) -> None:
    with pytest.raises(BadPayload):
        meta.parse(META_SETTINGS, body)


# --- parsing: Twilio --------------------------------------------------------------------------------

def test_twilio_sms_fixture() -> None:
    assert twilio.parse(TWILIO_SETTINGS, twilio_fixture("sms_text.form")) == [InboundMessage(
        channel="twilio", account_id="+14155550999", conversation_id="+14155550123",
        external_id="SM9a8b7c6d5e4f30211203f4e5d6c7b8a9", content="Do you have shoes?", sent_at=None)]


def test_twilio_whatsapp_text_fixture() -> None:
    assert twilio.parse(TWILIO_SETTINGS, twilio_fixture("whatsapp_text.form")) == [InboundMessage(
        channel="twilio", account_id="whatsapp:+14155238886", conversation_id="whatsapp:+5215512345678",
        external_id="SM1f2e3d4c5b6a79880796a5b4c3d2e1f0", content="Hola, ¿tienen envío?", sent_at=None)]


def test_twilio_voice_note_fixture() -> None:
    [message] = twilio.parse(TWILIO_SETTINGS, twilio_fixture("whatsapp_voice.form"))
    assert (message.account_id, message.conversation_id, message.external_id) == (
        "whatsapp:+14155238886", "whatsapp:+5215512345678", "MM5e0c1f3a9b7d4e2f8a6c0b1d2e3f4a5b")
    assert message.content is None and message.sent_at is None
    assert message.attachments == ({
        "file_type": "audio", "content_type": "audio/ogg",
        "data_url": f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages/"
                    "MM5e0c1f3a9b7d4e2f8a6c0b1d2e3f4a5b/Media/ME0f1e2d3c4b5a69788796a5b4c3d2e1f0"},)


@pytest.mark.parametrize("params", [
    {"MessageSid": "SM1", "MessageStatus": "delivered", "SmsStatus": "delivered", "AccountSid": TWILIO_SID,
     "From": "+14155550999", "To": "+14155550123", "ApiVersion": "2010-04-01"},
    {"CallSid": "CA1234567890ABCDE", "AccountSid": TWILIO_SID, "From": "+14155550123", "To": "+14155550999",
     "CallStatus": "ringing", "Direction": "inbound"},
    {"MessageSid": "SM1", "MessageStatus": "read", "Body": "our reply", "AccountSid": TWILIO_SID,
     "From": "whatsapp:+14155238886", "To": "whatsapp:+5215512345678"},
], ids=["status_callback", "voice_call", "status_callback_with_body"])
def test_twilio_requests_that_are_not_messages(params: dict[str, str]) -> None:
    assert twilio.parse(TWILIO_SETTINGS, urlencode(params).encode()) == []


# --- split_reply ------------------------------------------------------------------------------------

PREFIX = re.compile(r"^\((\d+)/(\d+)\) ")


def bodies(parts: list[str]) -> list[str]:
    """The parts without their "(i/n) " prefixes, checking the numbering on the way."""
    if len(parts) == 1:
        return parts
    found = [PREFIX.match(part) for part in parts]
    assert [(m.group(1), m.group(2)) if m else None for m in found] == [
        (str(n), str(len(parts))) for n in range(1, len(parts) + 1)]
    return [PREFIX.sub("", part) for part in parts]


def long_reply(paragraphs: int, sentences: int) -> str:
    return "\n\n".join(" ".join(f"Sentence {p}.{s} tells the customer something about the order."
                                for s in range(sentences)) for p in range(paragraphs))


@pytest.mark.parametrize("limit", [4096, 2000, 1000, 1600, 60])
def test_split_reply_leaves_a_short_reply_alone(limit: int) -> None:
    text = ("Sure, we ship to Monterrey. " * 200)[:limit]
    assert len(text) == limit and text == text.strip()
    assert split_reply(text, limit) == [text]
    assert split_reply(f"  {text}\n", limit) == [text]
    assert len(split_reply(text + "!", limit)) == 2


@pytest.mark.parametrize("limit", [4096, 2000, 1000, 1600])
def test_split_reply_keeps_every_part_under_the_platform_limit(limit: int) -> None:
    text = long_reply(paragraphs=30, sentences=12)
    parts = split_reply(text, limit)
    assert len(parts) > 1
    assert all(len(part) <= limit for part in parts)
    assert " ".join(bodies(parts)).split() == text.split()
    # Every cut falls at a sentence end at least (these paragraphs are shorter than the limit: at a paragraph).
    assert all(body.endswith("order.") for body in bodies(parts))


def test_split_reply_cuts_at_paragraphs_first() -> None:
    paragraphs = ["Yes, we ship to Monterrey, and it takes two days.",
                  "Shipping is free on orders over 500 pesos.",
                  "Would you like me to reserve the shoes for you?"]
    assert split_reply("\n\n".join(paragraphs), 60) == [
        f"({n}/3) {paragraph}" for n, paragraph in enumerate(paragraphs, 1)]


def test_split_reply_keeps_paragraph_breaks_and_prefers_them_to_spaces() -> None:
    # No sentence ends here: without paragraphs, the cut would fall between words, mid-paragraph.
    text = "Hi Ana!\n\nOpening hours\n\nMonday to Friday we open at nine and close at eight"
    assert split_reply(text, 60) == ["(1/2) Hi Ana!\n\nOpening hours",
                                     "(2/2) Monday to Friday we open at nine and close at eight"]


def test_split_reply_cuts_a_long_paragraph_at_sentence_ends() -> None:
    # Packing words greedily would cut after "Saturdays we close at"; sentences come first.
    text = "We open at nine on weekdays. Saturdays we close at two! Sundays we rest?"
    assert split_reply(text, 60) == ["(1/2) We open at nine on weekdays.",
                                     "(2/2) Saturdays we close at two! Sundays we rest?"]


def test_split_reply_cuts_a_long_sentence_between_words() -> None:
    text = " ".join(f"word{n}" for n in range(40))
    parts = split_reply(text, 60)
    assert len(parts) > 1 and all(len(part) <= 60 for part in parts)
    assert " ".join(bodies(parts)).split() == text.split()  # no word was cut in two


def test_split_reply_hard_cuts_a_word_longer_than_a_message() -> None:
    assert split_reply("x" * 130, 60) == ["(1/3) " + "x" * 54, "(2/3) " + "x" * 54, "(3/3) " + "x" * 22]


def test_split_reply_makes_room_for_a_prefix_of_many_parts() -> None:
    parts = split_reply("x" * 7800, 60)
    assert len(parts) > 99 and max(len(p) for p in parts) <= 60
    assert parts[-1].startswith(f"({len(parts)}/{len(parts)}) ")


WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzáé0123456789", min_size=1, max_size=15)
SEPARATORS = st.sampled_from([" ", "  ", "\n", "\n\n", "\n \n", ". ", "! ", "? ", ".\n\n", "… "])


@st.composite
def replies(draw: st.DrawFn) -> str:
    return "".join(word + sep for word, sep in draw(st.lists(st.tuples(WORDS, SEPARATORS), min_size=1, max_size=90)))


@given(text=replies(), limit=st.sampled_from([60, 80, 1000, 1600]))
def test_split_reply_property_bounded_parts_and_every_word_in_order(text: str, limit: int) -> None:
    parts = split_reply(text, limit)
    assert all(0 < len(part) <= limit for part in parts)
    assert " ".join(bodies(parts)).split() == text.split()


@given(text=st.text(alphabet="ab .!\n", max_size=2000), limit=st.sampled_from([60, 200]))
@example(text="a" * 500, limit=60)
@example(text="a" * 59 + " " + "b" * 200 + ". a", limit=60)
def test_split_reply_property_no_character_lost_even_when_words_are_cut(text: str, limit: int) -> None:
    parts = split_reply(text, limit)
    assert all(len(part) <= limit for part in parts)
    assert "".join("".join(body.split()) for body in bodies(parts)) == "".join(text.split())


async def test_each_client_declares_its_platform_limit() -> None:
    async with httpx.AsyncClient() as http:
        assert WhatsAppClient(META_SETTINGS, http).max_chars == 4096
        assert MetaClient("messenger", META_SETTINGS, http).max_chars == 2000
        assert MetaClient("instagram", META_SETTINGS, http).max_chars == 1000
        assert TwilioClient(TWILIO_SETTINGS, http).max_chars == 1600


# --- capped downloads -------------------------------------------------------------------------------

async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_read_capped_refuses_a_declared_or_counted_excess() -> None:
    declared = httpx.Response(200, headers={"content-length": "5000"}, content=b"small")
    with pytest.raises(MediaTooLarge):
        await read_capped(declared, 100)
    undeclared = httpx.Response(200, content=chunks(b"x" * 60, b"x" * 60))  # streamed: no content-length
    assert "content-length" not in undeclared.headers
    with pytest.raises(MediaTooLarge):
        await read_capped(undeclared, 100)
    assert await read_capped(httpx.Response(200, content=chunks(b"Ogg", b"S")), 4) == b"OggS"


@respx.mock
async def test_download_follows_redirects_and_refuses_errors() -> None:
    respx.get("https://media.example/a").mock(
        return_value=httpx.Response(302, headers={"location": "https://storage.example/a"}))
    respx.get("https://storage.example/a").mock(
        return_value=httpx.Response(200, content=b"OggS", headers={"content-type": "audio/ogg"}))
    respx.get("https://media.example/gone").mock(return_value=httpx.Response(404))
    async with httpx.AsyncClient() as http:
        assert await download(http, "https://media.example/a", max_bytes=10) == (b"OggS", "audio/ogg")
        with pytest.raises(MediaUnavailable, match="HTTP 404"):
            await download(http, "https://media.example/gone", max_bytes=10)


# --- WhatsApp client --------------------------------------------------------------------------------

@respx.mock
async def test_whatsapp_posts_a_text_reply_and_returns_its_wamid() -> None:
    route = respx.post(f"{GRAPH}/106540352242922/messages").mock(return_value=httpx.Response(200, json={
        "messaging_product": "whatsapp", "contacts": [{"input": "16505551234", "wa_id": "16505551234"}],
        "messages": [{"id": "wamid.reply1"}]}))
    async with httpx.AsyncClient() as http:
        sent = await WhatsAppClient(META_SETTINGS, http).post_reply("106540352242922", "16505551234", "¡Hola!", 7)
    assert sent == "wamid.reply1"
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer wa-token"
    assert json.loads(request.content) == {"messaging_product": "whatsapp", "recipient_type": "individual",
                                           "to": "16505551234", "type": "text", "text": {"body": "¡Hola!"}}


@respx.mock
async def test_whatsapp_uses_the_configured_graph_host_and_version() -> None:
    route = respx.post("https://graph.test/v99.0/106540352242922/messages").mock(
        return_value=httpx.Response(200, json={"messages": [{"id": "wamid.x"}]}))
    settings = Settings(meta_app_secret=APP_SECRET, whatsapp_verify_token="vt", whatsapp_access_token="tok",
                        meta_graph_base_url="https://graph.test", meta_graph_api_version="v99.0")
    async with httpx.AsyncClient() as http:
        assert await WhatsAppClient(settings, http).post_reply("106540352242922", "16505551234", "hi", 7) == "wamid.x"
    assert route.call_count == 1


@respx.mock
async def test_whatsapp_typing_marks_the_last_message_read_and_off_sends_nothing() -> None:
    route = respx.post(f"{GRAPH}/106540352242922/messages").mock(return_value=httpx.Response(200, json={"success": True}))
    async with httpx.AsyncClient() as http:
        client = WhatsAppClient(META_SETTINGS, http)
        await client.set_typing("106540352242922", "16505551234", True, "wamid.last")
        await client.set_typing("106540352242922", "16505551234", False, "wamid.last")
        await client.set_typing("106540352242922", "16505551234", True, None)
    assert route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == "Bearer wa-token"
    assert json.loads(route.calls.last.request.content) == {
        "messaging_product": "whatsapp", "status": "read", "message_id": "wamid.last",
        "typing_indicator": {"type": "text"}}


@respx.mock
async def test_whatsapp_outside_the_window_is_permanent_and_a_server_error_is_not() -> None:
    respx.post(f"{GRAPH}/106540352242922/messages").mock(side_effect=[
        httpx.Response(400, json={"error": {"message": "Re-engagement message", "type": "OAuthException",
                                            "code": 131047, "error_data": {"details": "More than 24 hours"}}}),
        httpx.Response(400, json={"error": {"message": "Invalid parameter", "code": 100}}),
        httpx.Response(500, json={"error": {"message": "Service temporarily unavailable", "code": 2}}),
    ])
    async with httpx.AsyncClient() as http:
        client = WhatsAppClient(META_SETTINGS, http)
        with pytest.raises(PermanentSendError, match="131047"):
            await client.post_reply("106540352242922", "16505551234", "hi", 7)
        with pytest.raises(httpx.HTTPStatusError):
            await client.post_reply("106540352242922", "16505551234", "hi", 7)
        with pytest.raises(httpx.HTTPStatusError):
            await client.post_reply("106540352242922", "16505551234", "hi", 7)


@respx.mock
async def test_whatsapp_fetches_media_in_two_steps_with_the_token() -> None:
    media_url = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1037543291543636&ext=1"
    lookup = respx.get(f"{GRAPH}/1037543291543636").mock(return_value=httpx.Response(200, json={
        "messaging_product": "whatsapp", "url": media_url, "mime_type": "audio/ogg", "sha256": "m04p=",
        "file_size": 4, "id": "1037543291543636"}))
    media = respx.get(media_url).mock(return_value=httpx.Response(200, content=b"OggS"))
    async with httpx.AsyncClient() as http:
        data, content_type = await WhatsAppClient(META_SETTINGS, http).fetch_media(
            {"file_type": "audio", "media_id": "1037543291543636"}, max_bytes=100)
    assert (data, content_type) == (b"OggS", "audio/ogg")
    assert lookup.calls.last.request.headers["authorization"] == "Bearer wa-token"
    assert media.calls.last.request.headers["authorization"] == "Bearer wa-token"


@respx.mock
async def test_whatsapp_media_declared_too_large_is_not_downloaded() -> None:
    # The download URL is not mocked: fetching it would fail the test with respx's error instead.
    respx.get(f"{GRAPH}/1037543291543636").mock(return_value=httpx.Response(200, json={
        "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", "mime_type": "video/mp4",
        "file_size": 50_000_000, "id": "1037543291543636"}))
    async with httpx.AsyncClient() as http:
        client = WhatsAppClient(META_SETTINGS, http)
        with pytest.raises(MediaTooLarge):
            await client.fetch_media({"media_id": "1037543291543636"}, max_bytes=1_000_000)
        with pytest.raises(MediaUnavailable):
            await client.fetch_media({"file_type": "audio"}, max_bytes=1_000_000)


# --- Messenger and Instagram client -----------------------------------------------------------------

# Instagram's webhook names the Instagram account, not the Page whose token sends: "me" is that Page.
@respx.mock
@pytest.mark.parametrize(("channel", "account", "node", "token"), [
    ("messenger", "106540352242922", "106540352242922", "page-token"),
    ("instagram", "17841400000000000", "me", "ig-token"),
])
async def test_meta_posts_a_response_with_the_channels_token(channel: str, account: str, node: str,
                                                             token: str) -> None:
    route = respx.post(f"{GRAPH}/{node}/messages").mock(
        return_value=httpx.Response(200, json={"recipient_id": "978239761327698", "message_id": "m_reply"}))
    async with httpx.AsyncClient() as http:
        sent = await MetaClient(channel, META_SETTINGS, http).post_reply(account, "978239761327698", "Hi there", 7)
    assert sent == "m_reply"
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {token}"
    assert json.loads(request.content) == {"recipient": {"id": "978239761327698"}, "messaging_type": "RESPONSE",
                                           "message": {"text": "Hi there"}}


@respx.mock
async def test_meta_typing_is_a_sender_action() -> None:
    route = respx.post(f"{GRAPH}/106540352242922/messages").mock(return_value=httpx.Response(200, json={}))
    async with httpx.AsyncClient() as http:
        client = MetaClient("messenger", META_SETTINGS, http)
        await client.set_typing("106540352242922", "24015973678123456", True, "m_last")
        await client.set_typing("106540352242922", "24015973678123456", False, None)
    assert [json.loads(call.request.content) for call in route.calls] == [
        {"recipient": {"id": "24015973678123456"}, "sender_action": "typing_on"},
        {"recipient": {"id": "24015973678123456"}, "sender_action": "typing_off"}]


@respx.mock
async def test_meta_outside_the_window_is_permanent() -> None:
    respx.post(f"{GRAPH}/106540352242922/messages").mock(return_value=httpx.Response(400, json={"error": {
        "message": "(#10) This message is sent outside of allowed window.", "type": "OAuthException",
        "code": 10, "error_subcode": 2018278}}))
    async with httpx.AsyncClient() as http:
        with pytest.raises(PermanentSendError):
            await MetaClient("messenger", META_SETTINGS, http).post_reply("106540352242922", "24015973678123456",
                                                                          "hi", 7)


@respx.mock
async def test_meta_media_is_fetched_from_the_cdn_url_without_a_token() -> None:
    url = "https://cdn.fbsbx.com/v/t59.3654-21/000000_n.mp4/audioclip-1749416389.mp4?oh=00_x&oe=6850AB12"
    route = respx.get(url).mock(return_value=httpx.Response(200, content=b"\x00\x00\x00 ftyp",
                                                            headers={"content-type": "audio/mp4"}))
    async with httpx.AsyncClient() as http:
        client = MetaClient("messenger", META_SETTINGS, http)
        assert await client.fetch_media({"data_url": url}, max_bytes=100) == (b"\x00\x00\x00 ftyp", "audio/mp4")
        for attachment in ({"file_type": "audio"}, {"data_url": "file:///etc/passwd"}):
            with pytest.raises(MediaUnavailable):
                await client.fetch_media(attachment, max_bytes=100)
    assert "authorization" not in route.calls.last.request.headers


# --- Twilio client ----------------------------------------------------------------------------------

TWILIO_MESSAGES = f"{TWILIO_API}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
TWILIO_BASIC = "Basic " + base64.b64encode(f"{TWILIO_SID}:12345".encode()).decode()


@respx.mock
async def test_twilio_posts_the_reply_from_our_number_with_basic_auth() -> None:
    route = respx.post(TWILIO_MESSAGES).mock(return_value=httpx.Response(201, json={"sid": "SMreply", "status": "queued"}))
    async with httpx.AsyncClient() as http:
        sent = await TwilioClient(TWILIO_SETTINGS, http).post_reply(
            "whatsapp:+14155238886", "whatsapp:+5215512345678", "Sí, enviamos.", 7)
    assert sent == "SMreply"
    request = route.calls.last.request
    assert request.headers["authorization"] == TWILIO_BASIC
    assert parse_qs(request.content.decode()) == {"From": ["whatsapp:+14155238886"],
                                                  "To": ["whatsapp:+5215512345678"], "Body": ["Sí, enviamos."]}


@respx.mock
async def test_twilio_permanent_errors_and_retryable_ones() -> None:
    respx.post(TWILIO_MESSAGES).mock(side_effect=[
        httpx.Response(400, json={"code": 63016, "message": "Failed to send freeform message", "status": 400}),
        httpx.Response(400, json={"code": 21610, "message": "Attempt to send to unsubscribed recipient"}),
        httpx.Response(500, json={"code": 20500, "message": "Internal Server Error"}),
    ])
    async with httpx.AsyncClient() as http:
        client = TwilioClient(TWILIO_SETTINGS, http)
        with pytest.raises(PermanentSendError, match="63016"):
            await client.post_reply("+14155550999", "+14155550123", "hi", 7)
        with pytest.raises(PermanentSendError, match="21610"):
            await client.post_reply("+14155550999", "+14155550123", "hi", 7)
        with pytest.raises(httpx.HTTPStatusError):
            await client.post_reply("+14155550999", "+14155550123", "hi", 7)


@respx.mock
async def test_twilio_media_goes_with_basic_auth_to_the_api_host_only() -> None:
    [message] = twilio.parse(TWILIO_SETTINGS, twilio_fixture("whatsapp_voice.form"))
    attachment = message.attachments[0]
    route = respx.get(attachment["data_url"]).mock(
        return_value=httpx.Response(200, content=b"OggS", headers={"content-type": "audio/ogg"}))
    async with httpx.AsyncClient() as http:
        client = TwilioClient(TWILIO_SETTINGS, http)
        assert await client.fetch_media(attachment, max_bytes=100) == (b"OggS", "audio/ogg")
        with pytest.raises(MediaUnavailable):
            await client.fetch_media({"data_url": "https://169.254.169.254/latest/meta-data"}, max_bytes=100)
        with pytest.raises(MediaUnavailable):
            await client.fetch_media({"data_url": "https://api.twilio.com.evil.example/x"}, max_bytes=100)
    assert route.calls.last.request.headers["authorization"] == TWILIO_BASIC


async def test_twilio_has_no_typing() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda request: pytest.fail("no request expected"))) as http:
        await TwilioClient(TWILIO_SETTINGS, http).set_typing("+14155550999", "+14155550123", True, "SM1")


# --- ChannelRouter ----------------------------------------------------------------------------------

class FakeClient:
    """A channel client that records what it posts and fails on the attempts it is told to."""

    def __init__(self, channel: str = "whatsapp", max_chars: int = 60, fail_on: int | None = None,
                 error: Exception | None = None) -> None:
        self.channel = channel
        self.max_chars = max_chars
        self.fail_on = fail_on  # the 1-based attempt that raises
        self.error = error or httpx.ConnectError("platform unreachable")
        self.attempts = 0
        self.posted: list[tuple[str, str, str, int]] = []
        self.typing: list[tuple[str, str, bool, str | None]] = []
        self.handed_off: list[tuple[str, str, str, int]] = []

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None:
        self.attempts += 1
        if self.attempts == self.fail_on:
            raise self.error
        self.posted.append((account_id, conversation_id, content, buffer_id))
        return f"id-{self.attempts}"

    async def set_typing(self, account_id: str, conversation_id: str, on: bool, last_message_id: str | None) -> None:
        self.typing.append((account_id, conversation_id, on, last_message_id))

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None:
        self.handed_off.append((account_id, conversation_id, reason, buffer_id))

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]:
        return b"data", "audio/ogg"


def claimed(channel: str = "whatsapp") -> ClaimedBuffer:
    return ClaimedBuffer(buffer_id=7, lease_token="lease-1", channel=channel, account_id="106540352242922",
                         conversation_id="16505551234", attempts=1, message_count=2,
                         due_at=datetime(2026, 4, 20, tzinfo=timezone.utc), reply_draft=None)


PARAGRAPHS = ["Yes, we ship to Monterrey, and it takes two days.",
              "Shipping is free on orders over 500 pesos.",
              "Would you like me to reserve the shoes for you?"]
THREE_PART_REPLY = "\n\n".join(PARAGRAPHS)


async def test_router_posts_a_short_reply_as_one_message() -> None:
    client = FakeClient()
    assert await ChannelRouter({"whatsapp": client}).post_reply(claimed(), "Hi!") == "id-1"
    assert client.posted == [("106540352242922", "16505551234", "Hi!", 7)]


async def test_router_posts_a_long_reply_in_parts_in_order() -> None:
    client = FakeClient()
    assert await ChannelRouter({"whatsapp": client}).post_reply(claimed(), THREE_PART_REPLY) == "id-3"
    assert [content for *_, content, _ in client.posted] == [
        f"({n}/3) {paragraph}" for n, paragraph in enumerate(PARAGRAPHS, 1)]


async def test_router_failure_after_the_first_part_carries_the_unsent_remainder() -> None:
    error = httpx.ConnectError("platform unreachable")
    client = FakeClient(fail_on=2, error=error)
    with pytest.raises(PartlySent) as raised:
        await ChannelRouter({"whatsapp": client}).post_reply(claimed(), THREE_PART_REPLY)
    assert raised.value.remainder == PARAGRAPHS[1] + "\n\n" + PARAGRAPHS[2]
    assert raised.value.cause is error
    assert len(client.posted) == 1 and client.attempts == 2  # nothing after the failing part


async def test_router_failure_of_the_first_part_is_the_original_error() -> None:
    error = PermanentSendError("outside the 24-hour customer-service window")
    client = FakeClient(fail_on=1, error=error)
    with pytest.raises(PermanentSendError) as raised:
        await ChannelRouter({"whatsapp": client}).post_reply(claimed(), THREE_PART_REPLY)
    assert raised.value is error
    assert client.posted == []


async def test_router_refuses_a_channel_not_configured_here() -> None:
    router = ChannelRouter({"whatsapp": FakeClient()})
    with pytest.raises(PermanentSendError, match="telegram"):
        await router.post_reply(claimed("telegram"), "hi")
    with pytest.raises(PermanentSendError):
        await router.set_typing(claimed("telegram"), True)


async def test_router_sends_typing_hand_off_and_media_to_the_buffers_channel() -> None:
    whatsapp_client, twilio_client = FakeClient("whatsapp"), FakeClient("twilio")
    router = ChannelRouter({"whatsapp": whatsapp_client, "twilio": twilio_client})
    assert router.channels == ["twilio", "whatsapp"]
    await router.set_typing(claimed(), True, "wamid.last")
    await router.hand_off(claimed(), "wants a refund")
    assert await router.fetch_media(claimed(), {"media_id": "1"}, max_bytes=10) == (b"data", "audio/ogg")
    assert whatsapp_client.typing == [("106540352242922", "16505551234", True, "wamid.last")]
    assert whatsapp_client.handed_off == [("106540352242922", "16505551234", "wants a refund", 7)]
    assert twilio_client.typing == [] and twilio_client.handed_off == []
