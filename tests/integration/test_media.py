"""Voice notes, images, locations and contact cards reach the model: through signed webhooks, the
real database and the sweeper, with Chatwoot's attachments and OpenAI's transcription faked over
HTTP."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, AsyncIterator

import pytest

from shared.config import Settings
from shared.runtime import Runtime
from tests.conftest import chatwoot_fixture
from tests.support.far_side import FarSide
from tests.support.sql import buffers, fetch, make_due, set_flag
from tests.support.webhook import Bot

JPEG = b"\xff\xd8\xff\xe0 a small jpeg"
STATIC_WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00" + b"\x00" * 9
ANIMATED_WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x02" + b"\x00" * 9


def with_attachment(fixture: str, message_id: int, **attachment: Any) -> dict[str, Any]:
    """A captured incoming message, given a new id and its attachment's fields replaced."""
    payload = chatwoot_fixture(fixture)
    payload["id"] = message_id
    payload["attachments"] = [{**payload["attachments"][0], **attachment}]
    return payload


def last_user_content(far_side: FarSide, call: int = -1) -> Any:
    return far_side.completions[call]["messages"][-1]["content"]


async def answer(bot: Bot, database_url: str) -> dict[str, int]:
    await make_due(database_url)
    return await bot.sweep()


async def test_voice_note_is_transcribed_once_across_a_retry(bot: Bot, far_side: FarSide, database_url: str) -> None:
    # Right after message_created the file may 404 for a moment: the download retries.
    url = far_side.add_media("voice1", b"OggS\x00 voice:Quiero cambiar la direccion de entrega",
                             "audio/ogg", not_found_first=1)
    assert await bot.status_of(with_attachment("message_created_incoming_audio", 1, data_url=url)) == "buffered"
    far_side.fail_completions = 2  # the model is down for this attempt (the SDK retries once itself)
    assert await answer(bot, database_url) == {"retry": 1}
    assert far_side.media["voice1"].requests == 2 and len(far_side.transcriptions) == 1

    assert await answer(bot, database_url) == {"completed": 1}
    assert len(far_side.transcriptions) == 1  # the retry read the stored transcript
    assert far_side.transcriptions[0]["model"] == "gpt-4o-mini-transcribe"
    assert last_user_content(far_side) == "[voice note, transcribed] Quiero cambiar la direccion de entrega"
    (message,) = await fetch(database_url, "select attachments from public.buffered_messages")
    assert json.loads(message["attachments"])[0]["transcript"] == "Quiero cambiar la direccion de entrega"


async def test_chatwoots_own_transcription_is_used_without_paying_again(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    url = far_side.add_media("voice2", b"OggS voice:never asked", "audio/ogg")
    payload = with_attachment("message_created_incoming_audio", 1, data_url=url, transcribed_text="Oi, tudo bem?")
    assert await bot.status_of(payload) == "buffered"
    assert await answer(bot, database_url) == {"completed": 1}
    assert far_side.transcriptions == [] and far_side.media["voice2"].requests == 0
    assert last_user_content(far_side) == "[voice note, transcribed] Oi, tudo bem?"


async def test_image_is_an_image_part_of_the_model_call_with_its_caption(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    url = far_side.add_media("shoe", JPEG, "image/jpeg")
    assert await bot.status_of(with_attachment("message_created_incoming_image_caption", 1, data_url=url)) == "buffered"
    assert await answer(bot, database_url) == {"completed": 1}
    assert last_user_content(far_side) == [
        {"type": "text", "text": "¿Lo tienen en talla 27?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()}}]


async def test_stickers_are_images_unless_animated(bot: Bot, far_side: FarSide, database_url: str) -> None:
    still = far_side.add_media("still", STATIC_WEBP, "image/webp")
    moving = far_side.add_media("moving", ANIMATED_WEBP, "image/webp")
    await bot.post(with_attachment("message_created_incoming_sticker", 1, data_url=still))
    await bot.post(with_attachment("message_created_incoming_sticker", 2, data_url=moving))
    assert await answer(bot, database_url) == {"completed": 1}
    still_part, moving_part = (m["content"] for m in far_side.completions[0]["messages"][-2:])
    assert still_part == [{"type": "image_url", "image_url": {
        "url": "data:image/webp;base64," + base64.b64encode(STATIC_WEBP).decode()}}]  # no caption: the image alone
    assert moving_part == "[sticker: an animated sticker, not shown]"


async def test_a_voice_note_that_cannot_be_fetched_never_fails_the_burst(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    # The captured payload's data_url is on another host than CHATWOOT_BASE_URL: refused, not fetched.
    assert await bot.status_of(chatwoot_fixture("message_created_incoming_audio")) == "buffered"
    assert await answer(bot, database_url) == {"completed": 1}
    assert far_side.transcriptions == []
    assert last_user_content(far_side) == "[voice note: it could not be heard; ask the customer to write it]"
    assert [r["status"] for r in await buffers(database_url)] == ["completed"]


async def test_a_file_the_transcriber_cannot_read_is_a_note_too(bot: Bot, far_side: FarSide, database_url: str) -> None:
    url = far_side.add_media("noise", b"OggS static", "audio/ogg")  # the fake answers 400: no words in it
    assert await bot.status_of(with_attachment("message_created_incoming_audio", 1, data_url=url)) == "buffered"
    assert await answer(bot, database_url) == {"completed": 1}
    assert len(far_side.transcriptions) == 1
    assert last_user_content(far_side) == "[voice note: it could not be heard; ask the customer to write it]"


async def test_flags_turn_transcription_and_images_off(bot: Bot, far_side: FarSide, database_url: str) -> None:
    await set_flag(database_url, "voice_transcription", False)
    await set_flag(database_url, "image_understanding", False)
    voice = far_side.add_media("v", b"OggS voice:hola", "audio/ogg")
    image = far_side.add_media("i", JPEG, "image/jpeg")
    await bot.post(with_attachment("message_created_incoming_audio", 1, data_url=voice))
    await bot.post(with_attachment("message_created_incoming_image_caption", 2, data_url=image))
    assert await answer(bot, database_url) == {"completed": 1}
    assert far_side.transcriptions == [] and far_side.media["v"].requests == far_side.media["i"].requests == 0
    messages = far_side.completions[0]["messages"]
    assert messages[-2]["content"] == "[voice note: voice notes cannot be listened to here; ask the customer to write it]"
    assert messages[-1]["content"][1] == {"type": "text", "text": "[image: not shown: image understanding is off]"}


@pytest.fixture
async def two_image_bot(settings: Settings) -> AsyncIterator[Bot]:
    bot = Bot(Runtime(dataclasses.replace(settings, media_max_images=2, media_max_image_mb=0.001)))
    yield bot
    await bot.close()


async def test_caps_on_images_per_burst_and_size(two_image_bot: Bot, far_side: FarSide, database_url: str) -> None:
    # A file over MEDIA_MAX_IMAGE_MB (its size unknown until downloaded), then two small images.
    big = far_side.add_media("big", b"x" * 5000, "image/jpeg")
    await two_image_bot.post(with_attachment("message_created_incoming_image_caption", 9, data_url=big, file_size=None))
    for n in range(2):
        url = far_side.add_media(f"img{n}", JPEG, "image/jpeg")
        await two_image_bot.post(with_attachment("message_created_incoming_image_caption", n, data_url=url,
                                                 file_size=len(JPEG)))
    assert await answer(two_image_bot, database_url) == {"completed": 1}
    contents = [m["content"] for m in far_side.completions[0]["messages"][-3:]]
    images = [p for c in contents for p in c if p["type"] == "image_url"]
    notes = [p["text"] for c in contents for p in c if p["type"] == "text" and p["text"].startswith("[")]
    assert len(images) == 1  # two are tried per burst: the big one, then one small; the last is noted
    assert notes == ["[image: not shown: larger than 0.001 MB]", "[image: not shown: only 2 images per burst are]"]


async def test_location_and_contact_card_reach_the_model_as_text(bot: Bot, far_side: FarSide, database_url: str) -> None:
    await bot.post(chatwoot_fixture("message_created_incoming_location"))
    await bot.post(chatwoot_fixture("message_created_incoming_contact"))
    assert await answer(bot, database_url) == {"completed": 1}
    messages = far_side.completions[0]["messages"]
    assert messages[-2]["content"] == "[location: -23.561414, -46.655881]"
    assert messages[-1]["content"] == [{"type": "text", "text": "João Souza"},
                                       {"type": "text", "text": "[contact card: João Souza, +55 11 91234-5678]"}]
