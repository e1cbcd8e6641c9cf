"""WhatsApp Cloud API, Messenger, Instagram and Twilio end to end: signed webhooks with the
platforms' captured payloads, the real database and sweeper, and Meta's Graph API, Twilio's
Messages API and the model faked over HTTP (tests/support/far_side.py).

The captured payloads carry the time they were captured; a delivery here is "now", so each test
stamps its messages with the current time (an old one would be kept as stale, unanswered).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from typing import Any, AsyncIterator
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from shared.channels import graph, twilio
from shared.config import Settings
from shared.runtime import Runtime
from tests.conftest import FIXTURES
from tests.support.far_side import FarSide
from tests.support.sql import buffers, fetch, make_due
from tests.support.webhook import Bot

APP_SECRET = "test_app_secret"
TWILIO_TOKEN = "test-twilio-token"
TWILIO_SID = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
TWILIO_URL = "https://hooks.example.com/webhooks/twilio"
BUSINESS = "106540352242922"  # the WhatsApp fixtures' phone_number_id
CUSTOMER = "16505551234"


@pytest.fixture
def channel_settings(settings: Settings, far_side: FarSide) -> Settings:
    return dataclasses.replace(
        settings, meta_graph_base_url=far_side.url, twilio_api_base_url=far_side.url, meta_app_secret=APP_SECRET,
        whatsapp_verify_token="wa-verify", whatsapp_access_token="wa-token",
        meta_verify_token="meta-verify", meta_page_access_token="page-token", instagram_access_token="ig-token",
        twilio_auth_token=TWILIO_TOKEN, twilio_account_sid=TWILIO_SID, twilio_webhook_url=TWILIO_URL)


@pytest.fixture
async def bot(channel_settings: Settings) -> AsyncIterator[Bot]:
    bot = Bot(Runtime(channel_settings))
    yield bot
    await bot.close()


def fixture(path: str) -> Any:
    return json.loads((FIXTURES / path).read_text())


def whatsapp_delivery(*messages: dict[str, Any], statuses: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """One Cloud API delivery holding these messages (and statuses), as the text fixture frames them."""
    delivery = fixture("whatsapp/text.json")
    value = delivery["entry"][0]["changes"][0]["value"]
    value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return delivery


def wa_text(wamid: str, text: str, sent: float | None = None, sender: str = CUSTOMER) -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": str(int(sent or time.time())), "type": "text",
            "text": {"body": text}}


async def post_meta(bot: Bot, route: str, payload: dict[str, Any] | bytes, secret: str = APP_SECRET,
                    signature: str | None = None) -> httpx.Response:
    # Meta's own serialisation escapes "/" and non-ASCII: the signature must be over these bytes.
    body = payload if isinstance(payload, bytes) else json.dumps(payload).replace("/", "\\/").encode()
    headers = {"content-type": "application/json",
               "x-hub-signature-256": signature if signature is not None else graph.sign(secret, body)}
    return await bot.client.post(route, content=body, headers=headers)


async def post_twilio(bot: Bot, params: dict[str, str] | list[tuple[str, str]]) -> httpx.Response:
    pairs = list(params.items()) if isinstance(params, dict) else params
    headers = {"content-type": "application/x-www-form-urlencoded",
               "x-twilio-signature": twilio.sign(TWILIO_TOKEN, TWILIO_URL, pairs)}
    return await bot.client.post("/webhooks/twilio", content=urlencode(pairs).encode(), headers=headers)


def twilio_fixture(name: str) -> dict[str, str]:
    return dict(parse_qsl((FIXTURES / "twilio" / f"{name}.form").read_text().strip(), keep_blank_values=True))


async def answer(bot: Bot, database_url: str) -> dict[str, int]:
    await make_due(database_url)
    return await bot.sweep()


# --- WhatsApp Cloud API -------------------------------------------------------------------------------

async def test_whatsapp_handshake_answers_the_challenge_only_with_the_right_token(bot: Bot) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "wa-verify", "hub.challenge": "1158201444"}
    right = await bot.client.get("/webhooks/whatsapp", params=query)
    assert (right.status_code, right.text) == (200, "1158201444")
    wrong = await bot.client.get("/webhooks/whatsapp", params={**query, "hub.verify_token": "guess"})
    assert wrong.status_code == 403 and "1158201444" not in wrong.text


async def test_a_whatsapp_burst_in_one_batched_delivery_gets_one_reply_after_a_read_receipt(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    status = fixture("whatsapp/status_delivered.json")["entry"][0]["changes"][0]["value"]["statuses"][0]
    delivery = whatsapp_delivery(wa_text("wamid.A1", "Hola"), wa_text("wamid.A2", "¿tienen talla 27?"),
                                 statuses=(status,))
    response = await post_meta(bot, "/webhooks/whatsapp", delivery)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == ["buffered", "buffered"]
    assert (await post_meta(bot, "/webhooks/whatsapp", delivery)).json()["results"][0]["status"] == "duplicate"

    assert await answer(bot, database_url) == {"completed": 1}
    (typing,) = far_side.platform_typing()
    (reply,) = far_side.platform_sends("graph")
    assert typing["body"] == {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.A2",
                              "typing_indicator": {"type": "text"}}
    assert typing["at"] <= reply["at"] and typing["account"] == reply["account"] == BUSINESS
    assert reply["auth"] == "Bearer wa-token"
    assert reply["body"] == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": CUSTOMER,
                             "type": "text", "text": {"body": "echo: Hola | ¿tienen talla 27?"}}
    (burst,) = await buffers(database_url)
    assert (burst["channel"], burst["account_id"], burst["conversation_id"]) == ("whatsapp", BUSINESS, CUSTOMER)
    assert burst["platform_message_id"] == "wamid.OUT2"


async def test_a_whatsapp_voice_note_is_fetched_in_two_steps_and_transcribed(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    far_side.add_media("1037543291543636", b"OggS\x00 voice:quiero las rojas", "audio/ogg")
    delivery = fixture("whatsapp/audio_voice.json")
    delivery["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(int(time.time()))
    assert (await post_meta(bot, "/webhooks/whatsapp", delivery)).json()["status"] == "buffered"
    assert await answer(bot, database_url) == {"completed": 1}
    assert far_side.completions[-1]["messages"][-1]["content"] == "[voice note, transcribed] quiero las rojas"
    (reply,) = far_side.platform_sends("graph")
    assert reply["body"]["text"]["body"] == "echo: [voice note, transcribed] quiero las rojas"


async def test_a_reply_outside_the_24_hour_window_fails_at_once_without_retries(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    far_side.platform_errors.append((400, {"error": {
        "message": "(#131047) Re-engagement message", "type": "OAuthException", "code": 131047,
        "error_data": {"messaging_product": "whatsapp", "details": "Message failed to send because more than 24 "
                                                                 "hours have passed since the customer last replied"}}}))
    await post_meta(bot, "/webhooks/whatsapp", whatsapp_delivery(wa_text("wamid.B1", "hola?")))
    assert await answer(bot, database_url) == {"failed": 1}
    (burst,) = await buffers(database_url)
    assert burst["status"] == "failed" and burst["attempts"] == 1
    assert "24-hour" in burst["last_error"] and "131047" in burst["last_error"]
    assert len(far_side.platform_sends("graph")) == 1
    assert await answer(bot, database_url) == {}  # nothing left to retry


async def test_a_stale_redelivery_is_kept_unanswered_and_leaves_the_waiting_burst_alone(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    fresh = await post_meta(bot, "/webhooks/whatsapp", whatsapp_delivery(wa_text("wamid.C2", "¿siguen abiertos?")))
    assert fresh.json()["status"] == "buffered"
    # Meta redelivers, after an outage, a message of two hours ago.
    old = await post_meta(bot, "/webhooks/whatsapp",
                          whatsapp_delivery(wa_text("wamid.C1", "hola, ayer pregunté", sent=time.time() - 7200)))
    assert old.json()["status"] == "stale" and "STALE_MESSAGE_SECONDS" in old.json()["reason"]
    assert await answer(bot, database_url) == {"completed": 1}
    (reply,) = far_side.platform_sends("graph")
    # Answered once, for the fresh message; the stale one is kept (history for the conversation's
    # later bursts), never answered on its own.
    assert reply["body"]["text"]["body"] == "echo: ¿siguen abiertos?"
    rows = await fetch(database_url, "select b.status, m.external_id from public.message_buffer b"
                                     " join public.buffered_messages m on m.buffer_id = b.id order by b.id")
    assert [(r["external_id"], r["status"]) for r in rows] == [("wamid.C2", "completed"), ("wamid.C1", "cancelled")]


async def test_a_hand_off_on_whatsapp_pauses_the_bot_there(bot: Bot, far_side: FarSide, database_url: str) -> None:
    # No inbox on the Cloud API to hand the customer to: the reply goes, the bot stays quiet after it.
    far_side.decisions.append({"reply": "Te paso con una persona del equipo.", "handoff": True,
                               "handoff_reason": "quiere un reembolso"})
    await post_meta(bot, "/webhooks/whatsapp", whatsapp_delivery(wa_text("wamid.H1", "quiero un reembolso")))
    assert await answer(bot, database_url) == {"completed": 1}
    (burst,) = await buffers(database_url)
    assert (burst["outcome"], burst["handoff_reason"]) == ("handed_off", "quiere un reembolso")
    later = await post_meta(bot, "/webhooks/whatsapp", whatsapp_delivery(wa_text("wamid.H2", "¿hola?")))
    assert later.json()["status"] == "held" and "bot paused" in later.json()["reason"]
    assert await answer(bot, database_url) == {}
    assert [c["body"]["text"]["body"] for c in far_side.platform_sends("graph")] == ["Te paso con una persona del equipo."]


async def test_a_wrong_or_missing_whatsapp_signature_is_refused_and_nothing_is_stored(
        bot: Bot, database_url: str) -> None:
    delivery = whatsapp_delivery(wa_text("wamid.D1", "hola"))
    assert (await post_meta(bot, "/webhooks/whatsapp", delivery, secret="another-secret")).status_code == 401
    assert (await post_meta(bot, "/webhooks/whatsapp", delivery, signature="")).status_code == 401
    signed = json.dumps(delivery).encode()
    reserialised = json.dumps(json.loads(signed), ensure_ascii=False, indent=1).encode()
    response = await post_meta(bot, "/webhooks/whatsapp", reserialised, signature=graph.sign(APP_SECRET, signed))
    assert response.status_code == 401
    assert await buffers(database_url) == []


async def test_a_long_reply_is_split_in_order_under_the_channels_limit(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    paragraphs = [f"Paragraph {n}. " + "All the sizes we have in store today. " * 12 for n in range(1, 8)]
    far_side.decisions.append({"reply": "\n\n".join(paragraphs)})
    payload = fixture("meta/instagram_text.json")
    payload["entry"][0]["messaging"][0]["timestamp"] = int(time.time() * 1000)
    await post_meta(bot, "/webhooks/meta", payload)
    assert await answer(bot, database_url) == {"completed": 1}
    parts = [c["body"]["message"]["text"] for c in far_side.platform_sends("graph")]
    assert len(parts) >= 4 and all(len(p) <= 1000 for p in parts)  # Instagram: 1000 characters
    assert [p.split(" ", 1)[0] for p in parts] == [f"({n}/{len(parts)})" for n in range(1, len(parts) + 1)]
    assert " ".join(p.split(" ", 1)[1] for p in parts).split() == "\n\n".join(paragraphs).split()
    # Instagram's Send API: the linked Page's token, on /me/messages.
    assert all((c["auth"], c["account"]) == ("Bearer ig-token", "me") for c in far_side.platform_sends("graph"))


async def test_a_split_reply_that_fails_midway_sends_only_the_rest_on_retry(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    paragraphs = [f"Part {n}: " + "We ship to every state in two to five days. " * 30 for n in range(1, 4)]
    far_side.decisions.append({"reply": "\n\n".join(paragraphs)})
    far_side.platform_errors += [(200, {}), (400, {"error": {"code": 2, "message": "temporary", "type": "OAuthException"}})]
    payload = fixture("meta/messenger_text.json")
    payload["entry"][0]["messaging"][0]["timestamp"] = int(time.time() * 1000)
    await post_meta(bot, "/webhooks/meta", payload)
    assert await answer(bot, database_url) == {"retry": 1}
    assert await answer(bot, database_url) == {"completed": 1}
    sent = [c["body"]["message"]["text"] for c in far_side.platform_sends("graph")]
    assert len(sent) == 4  # part 1, the refused part 2, then parts 2 and 3 again as "(1/2)", "(2/2)"
    delivered = [sent[0]] + sent[2:]
    assert [p.split(" ", 1)[0] for p in delivered] == ["(1/3)", "(1/2)", "(2/2)"]
    assert [p.split(" ", 1)[1] for p in delivered] == [p.strip() for p in paragraphs]
    assert len(far_side.completions) == 1  # the retry did not call the model again


# --- Messenger and Instagram --------------------------------------------------------------------------

async def test_messenger_reads_every_entry_ignores_echoes_and_answers_with_typing(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    now_ms = int(time.time() * 1000)
    text, echo = fixture("meta/messenger_text.json"), fixture("meta/messenger_echo.json")
    text["entry"][0]["messaging"][0]["timestamp"] = now_ms
    second = json.loads(json.dumps(text["entry"][0]))
    second["messaging"][0]["message"] = {"mid": "m_second", "text": "and on Sunday?"}
    delivery = {"object": "page", "entry": [text["entry"][0], echo["entry"][0], second,
                                            {"id": BUSINESS, "time": now_ms, "messaging": [
                                                {"sender": {"id": "24015973678123456"}, "recipient": {"id": BUSINESS},
                                                 "timestamp": now_ms, "read": {"watermark": now_ms}}]}]}
    response = await post_meta(bot, "/webhooks/meta", delivery)
    assert [r["status"] for r in response.json()["results"]] == ["buffered", "buffered"]
    redelivered = await post_meta(bot, "/webhooks/meta", delivery)
    assert [r["status"] for r in redelivered.json()["results"]] == ["duplicate", "duplicate"]
    assert await answer(bot, database_url) == {"completed": 1}
    (reply,) = far_side.platform_sends("graph")
    assert reply["body"] == {"recipient": {"id": "24015973678123456"}, "messaging_type": "RESPONSE",
                             "message": {"text": "echo: hi, is this open today? | and on Sunday?"}}
    assert reply["auth"] == "Bearer page-token" and reply["account"] == BUSINESS
    assert [t["body"]["sender_action"] for t in far_side.platform_typing()] == ["typing_on", "typing_off"]


async def test_an_instagram_voice_note_is_fetched_from_its_url_and_transcribed(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    url = far_side.add_media("igvoice", b"OggS\x00 voice:do you ship to Lima", "audio/mp4")
    payload = fixture("meta/instagram_audio.json")
    item = payload["entry"][0]["messaging"][0]
    item["timestamp"] = int(time.time() * 1000)
    item["message"]["attachments"][0]["payload"]["url"] = url
    assert (await post_meta(bot, "/webhooks/meta", payload)).json()["status"] == "buffered"
    (message,) = await fetch(database_url, "select m.attachments, b.channel from public.buffered_messages m"
                                           " join public.message_buffer b on b.id = m.buffer_id")
    assert message["channel"] == "instagram"
    assert json.loads(message["attachments"]) == [{"file_type": "audio", "data_url": url}]
    assert await answer(bot, database_url) == {"completed": 1}
    (reply,) = far_side.platform_sends("graph")
    assert reply["body"]["message"]["text"] == "echo: [voice note, transcribed] do you ship to Lima"


# --- Twilio -------------------------------------------------------------------------------------------

async def test_twilio_answers_empty_twiml_and_replies_later_through_the_messages_api(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    response = await post_twilio(bot, twilio_fixture("whatsapp_text"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert response.content == b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
    assert await answer(bot, database_url) == {"completed": 1}
    (reply,) = far_side.platform_sends("twilio")
    assert reply["account"] == TWILIO_SID
    assert reply["body"] == {"From": "whatsapp:+14155238886", "To": "whatsapp:+5215512345678",
                             "Body": "echo: Hola, ¿tienen envío?"}
    assert reply["auth"] == "Basic " + __import__("base64").b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()


async def test_twilio_status_callbacks_and_calls_are_acknowledged_and_ignored(bot: Bot, database_url: str) -> None:
    status = {"MessageSid": "SMx", "MessageStatus": "delivered", "AccountSid": TWILIO_SID,
              "From": "+14155550999", "To": "+14155550123"}
    call = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "From": "+12349013030", "To": "+18005551212"}
    for params in (status, call):
        response = await post_twilio(bot, params)
        assert response.status_code == 200 and b"<Response/>" in response.content
    assert await buffers(database_url) == []


async def test_twilio_threads_are_from_and_to_and_a_bad_signature_is_refused(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    first = twilio_fixture("sms_text")
    second = {**first, "MessageSid": "SM2", "To": "+14155550888"}  # the same customer, another of our numbers
    for params in (first, second, first):  # the last one: Twilio redelivering the first
        assert (await post_twilio(bot, params)).status_code == 200
    assert len(await fetch(database_url, "select 1 from public.buffered_messages")) == 2
    forged = {**first, "MessageSid": "SM3", "Body": "free shoes?"}
    body = urlencode(forged).encode()
    refused = await bot.client.post("/webhooks/twilio", content=body, headers={
        "content-type": "application/x-www-form-urlencoded",
        "x-twilio-signature": twilio.sign(TWILIO_TOKEN, "https://elsewhere.example/webhooks/twilio",
                                          list(forged.items()))})
    assert refused.status_code == 401
    assert await answer(bot, database_url) == {"completed": 2}
    assert sorted(c["body"]["From"] for c in far_side.platform_sends("twilio")) == ["+14155550888", "+14155550999"]


async def test_a_twilio_voice_note_is_fetched_with_basic_auth(bot: Bot, far_side: FarSide, database_url: str) -> None:
    params = twilio_fixture("whatsapp_voice")
    far_side.add_media("ME0f1e2d3c4b5a69788796a5b4c3d2e1f0", b"OggS\x00 voice:llega el martes?", "audio/ogg")
    params["MediaUrl0"] = params["MediaUrl0"].replace("https://api.twilio.com", far_side.url)
    assert (await post_twilio(bot, params)).status_code == 200
    assert await answer(bot, database_url) == {"completed": 1}
    (reply,) = far_side.platform_sends("twilio")
    assert reply["body"]["Body"] == "echo: [voice note, transcribed] llega el martes?"


# --- Chatwoot's WhatsApp inboxes: typing on WhatsApp itself -------------------------------------------

async def test_a_chatwoot_whatsapp_conversation_gets_the_read_receipt_and_typing_through_the_cloud_api(
        channel_settings: Settings, far_side: FarSide, database_url: str) -> None:
    from tests.conftest import chatwoot_fixture

    bot = Bot(Runtime(dataclasses.replace(channel_settings, chatwoot_whatsapp_inboxes={"12": BUSINESS})))
    try:
        mapped = chatwoot_fixture("message_created_incoming_text")  # inbox 12, a WhatsApp inbox
        other = {**chatwoot_fixture("message_created_incoming_text"), "id": 98232, "inbox": {"id": 14}}
        other["conversation"] = {**other["conversation"], "id": 432, "inbox_id": 14}
        assert await bot.status_of(mapped) == "buffered" and await bot.status_of(other) == "buffered"
        assert await answer(bot, database_url) == {"completed": 2}
    finally:
        await bot.close()
    (typing,) = far_side.platform_typing()  # only the mapped inbox's conversation
    assert typing["account"] == BUSINESS and typing["auth"] == "Bearer wa-token"
    assert typing["body"] == {"messaging_product": "whatsapp", "status": "read", "message_id": mapped["source_id"],
                              "typing_indicator": {"type": "text"}}
    reply_431 = next(r for r in far_side.replies if r["conversation"] == "431")
    assert typing["at"] <= reply_431["at"]
    assert [t["typing_status"] for t in far_side.typing].count("on") == 2  # Chatwoot's own indicator, both
    assert far_side.platform_sends("graph") == []  # the replies themselves go through Chatwoot


# --- off when not configured ---------------------------------------------------------------------------

async def test_a_channel_without_its_settings_is_404(settings: Settings) -> None:
    off = Bot(Runtime(settings))
    try:
        for method, route in (("GET", "/webhooks/whatsapp"), ("POST", "/webhooks/whatsapp"),
                              ("POST", "/webhooks/meta"), ("POST", "/webhooks/twilio")):
            assert (await off.client.request(method, route, content=b"{}")).status_code == 404, route
    finally:
        await off.close()


def test_nothing_of_an_unconfigured_channel_is_imported_on_the_webhooks_path() -> None:
    script = (
        "import sys, functions.webhook\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('shared.channels'))\n"
        "print(','.join(loaded))\n")
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True,
                            cwd=str(FIXTURES.parent.parent)).stdout.strip().split(",")
    assert "shared.channels.chatwoot" in loaded
    assert not {"shared.channels.whatsapp", "shared.channels.meta", "shared.channels.twilio",
                "shared.channels.graph", "shared.channels.router"} & set(loaded)
    configured = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                cwd=str(FIXTURES.parent.parent),
                                env={**env, "TWILIO_AUTH_TOKEN": "t", "TWILIO_ACCOUNT_SID": "AC1"}).stdout
    assert "shared.channels.twilio" in configured and "shared.channels.whatsapp" not in configured
