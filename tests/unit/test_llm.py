from __future__ import annotations

import json

import pytest

from shared.attachments import describe
from shared.llm import (
    BadModelOutput, EmptyReply, OfflinePlaceholderResponder, TranscriptionUnavailable, chat_messages,
    decision_from_text,
)
from shared.media import is_animated_webp
from shared.models import PromptTurn, Reply
from tests.conftest import chatwoot_fixture


def turn(role: str, content: str | None, *attachments: dict, in_burst: bool = True) -> PromptTurn:
    return PromptTurn(role, content, tuple(attachments), in_burst)


def test_history_then_burst_in_order_and_unaltered() -> None:
    turns = [
        turn("user", "Hola", in_burst=False),
        turn("assistant", "¡Hola! ¿En qué te ayudo?", in_burst=False),
        turn("user", "  do you have these shoes? "),
        turn("user", "in size 27?"),
    ]
    messages = chat_messages("SYSTEM", turns)
    assert messages == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": "Hola"},
        {"role": "assistant", "content": "¡Hola! ¿En qué te ayudo?"},
        {"role": "user", "content": "  do you have these shoes? "},
        {"role": "user", "content": "in size 27?"},
    ]


def test_a_human_agents_words_are_the_business_side_marked_as_a_person() -> None:
    messages = chat_messages("S", [turn("agent", "Te ayudo yo", in_burst=False)])
    assert messages[1] == {"role": "assistant", "content": "[human agent] Te ayudo yo"}


def test_attachments_are_noted_after_the_text_and_images_are_image_parts() -> None:
    voice = turn("user", None, {"file_type": "audio", "content_type": "audio/ogg", "transcript": "quiero la talla 27"})
    photo = turn("user", "¿talla 27?", {"file_type": "image", "content_type": "image/jpeg",
                                        "inline_image": "data:image/jpeg;base64,AAAA"})
    skipped = turn("user", "y esta", {"file_type": "image", "content_type": "image/jpeg",
                                      "media_note": "not shown: only 4 images per burst are"})
    messages = chat_messages("S", [voice, photo, skipped])
    assert messages[1] == {"role": "user", "content": "[voice note, transcribed] quiero la talla 27"}
    assert messages[2] == {"role": "user", "content": [
        {"type": "text", "text": "¿talla 27?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}]}
    assert messages[3]["content"][1] == {"type": "text", "text": "[image: not shown: only 4 images per burst are]"}


@pytest.mark.parametrize(("attachment", "text"), [
    ({"file_type": "audio", "media_note": "it could not be heard; ask the customer to write it"},
     "[voice note: it could not be heard; ask the customer to write it]"),
    ({"file_type": "audio", "transcribed_text": "Oi, tudo bem?"}, "[voice note, transcribed] Oi, tudo bem?"),
    ({"file_type": "audio", "transcript": ""},
     "[voice note with no words that could be made out; ask the customer to write it]"),
    ({"file_type": "audio"}, "[voice note, not transcribed]"),
    ({"file_type": "image", "content_type": "image/webp", "media_note": "an animated sticker, not shown"},
     "[sticker: an animated sticker, not shown]"),
    ({"file_type": "location", "coordinates_lat": -23.561414, "coordinates_long": -46.655881, "fallback_title": ""},
     "[location: -23.561414, -46.655881]"),
    ({"file_type": "location", "coordinates_lat": 1.5, "coordinates_long": 2.5, "fallback_title": "Av. Paulista 1000"},
     "[location: Av. Paulista 1000, 1.5, 2.5]"),
    ({"file_type": "contact", "fallback_title": "+55 11 91234-5678", "meta": {"firstName": "João", "lastName": "Souza"}},
     "[contact card: João Souza, +55 11 91234-5678]"),
    ({"file_type": "file", "content_type": "application/pdf",
      "data_url": "https://chat.example/rails/active_storage/blobs/redirect/x/Nota%20fiscal.pdf"},
     "[file: Nota fiscal.pdf (application/pdf), not opened]"),
    ({"file_type": "video", "content_type": "video/mp4"}, "[video (video/mp4), not watched]"),
])
def test_each_attachment_kind_reads_as_one_line(attachment: dict, text: str) -> None:
    assert describe(attachment) == text


def test_fixture_location_and_contact_read_with_coordinates_and_phone() -> None:
    location = chatwoot_fixture("message_created_incoming_location")["attachments"][0]
    contact = chatwoot_fixture("message_created_incoming_contact")["attachments"][0]
    assert describe(location) == "[location: -23.561414, -46.655881]"
    assert describe(contact) == "[contact card: João Souza, +55 11 91234-5678]"


# --- decoding the model's decision ---------------------------------------------------------------

def decision(**fields: object) -> str:
    return json.dumps({"should_reply": True, "reply": "", "handoff": False, "handoff_reason": None, **fields})


def test_structured_decisions() -> None:
    assert decision_from_text(decision(reply=" Sí, la tenemos. "), plain_allowed=False) == Reply("Sí, la tenemos.")
    assert decision_from_text(decision(should_reply=False, reply="ignored"), plain_allowed=False) == Reply(None)
    handoff = decision_from_text(decision(reply="Te paso con una persona.", handoff=True,
                                          handoff_reason="quiere un reembolso"), plain_allowed=False)
    assert handoff == Reply("Te paso con una persona.", "quiere un reembolso")
    assert handoff.outcome == "handed_off" and Reply(None).outcome == "no_reply" and Reply("x").outcome == "replied"
    silent = decision_from_text(decision(should_reply=False, handoff=True, handoff_reason=""), plain_allowed=False)
    assert silent == Reply(None, "the customer asked for a person")


def test_raw_json_never_reaches_a_customer() -> None:
    with pytest.raises(BadModelOutput):  # Structured Outputs required, prose came back
        decision_from_text("Claro, la tenemos.", plain_allowed=False)
    with pytest.raises(BadModelOutput):
        decision_from_text(json.dumps({"reply": 7, "should_reply": True}), plain_allowed=False)
    with pytest.raises(EmptyReply):
        decision_from_text(decision(reply="  "), plain_allowed=True)
    # A plain-text server whose model still answers in our shape: decoded, not forwarded as JSON.
    assert decision_from_text(decision(reply="Hola"), plain_allowed=True) == Reply("Hola")
    # Plain text from a plain server is the reply, even when it is JSON of another shape.
    assert decision_from_text('{"size": 27}', plain_allowed=True) == Reply('{"size": 27}')


async def test_offline_placeholder_says_it_is_one() -> None:
    placeholder = OfflinePlaceholderResponder()
    reply = await placeholder.reply([turn("user", "a"), turn("user", "b", in_burst=False)])
    assert reply.text is not None and reply.handoff_reason is None
    assert "offline placeholder" in reply.text and "1 message(s)" in reply.text and "1 earlier turn" in reply.text
    with pytest.raises(TranscriptionUnavailable, match="OPENAI_API_KEY"):
        await placeholder.transcribe(b"OggS", "voice.ogg", "audio/ogg")


def test_animated_webp_is_recognised() -> None:
    header = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00"
    assert is_animated_webp(header + b"\x02" + b"\x00" * 9)
    assert not is_animated_webp(header + b"\x00" + b"\x00" * 9)
    assert not is_animated_webp(b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20)
