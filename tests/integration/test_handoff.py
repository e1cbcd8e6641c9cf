"""Structured replies: the model replies, stays silent, or hands off to a human; and a server
without Structured Outputs still gets plain-text replies. The far side is faked over HTTP."""

from __future__ import annotations

import dataclasses
import logging
from typing import AsyncIterator

import pytest

from shared.config import Settings
from shared.logs import configure_logging
from shared.runtime import Runtime
from tests.conftest import incoming
from tests.support.far_side import FarSide
from tests.support.sql import buffers, fetch, make_due
from tests.support.webhook import Bot

HANDOFF = {"reply": "Te paso con una persona del equipo.", "handoff": True, "handoff_reason": "quiere un reembolso"}


async def answer(bot: Bot, database_url: str) -> dict[str, int]:
    await make_due(database_url)
    return await bot.sweep()


async def test_the_model_answers_through_a_strict_json_schema(bot: Bot, far_side: FarSide, database_url: str) -> None:
    await bot.post(incoming(1, "Hola"))
    assert await answer(bot, database_url) == {"completed": 1}
    (completion,) = far_side.completions
    response_format = completion["response_format"]
    assert response_format["type"] == "json_schema" and response_format["json_schema"]["strict"] is True
    assert set(response_format["json_schema"]["schema"]["required"]) == {"should_reply", "reply", "handoff",
                                                                         "handoff_reason"}
    assert "handoff" in completion["messages"][0]["content"]  # the system prompt explains the fields
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola"]  # the decoded reply, never JSON


async def test_hand_off_replies_opens_the_conversation_leaves_a_note_and_pauses(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.decisions.append(HANDOFF)
    await bot.post(incoming(1, "Quiero hablar con una persona, quiero mi dinero"))
    assert await answer(bot, database_url) == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.public_replies()] == ["Te paso con una persona del equipo."]
    assert [(s["conversation"], s["status"]) for s in far_side.statuses] == [("431", "open")]
    (note,) = far_side.private_notes()
    assert note["body"]["content"] == "Handed off by the bot: quiere un reembolso"
    (row,) = await buffers(database_url)
    assert (row["status"], row["outcome"], row["handoff_reason"]) == ("completed", "handed_off", "quiere un reembolso")
    (state,) = await fetch(database_url, "select pause_reason from public.conversation_state")
    assert state["pause_reason"] == "handed off by the bot: quiere un reembolso"
    # Until a human resolves it (or hands it back), the bot stays quiet.
    assert (await bot.post(incoming(2, "¿hola?"))).json()["status"] == "held"


async def test_a_failed_hand_off_is_retried_without_sending_the_reply_twice(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.decisions.append(HANDOFF)
    far_side.fail_handoffs = 1
    await bot.post(incoming(1, "Una persona, por favor"))
    assert await answer(bot, database_url) == {"retry": 1}
    (row,) = await buffers(database_url)
    assert row["reply_sent_at"] is not None and row["handoff_reason"] == "quiere un reembolso"
    assert await answer(bot, database_url) == {"completed": 1}
    assert len(far_side.public_replies()) == 1 and len(far_side.private_notes()) == 1
    assert len(far_side.completions) == 1  # the retry acted on the decision already taken
    assert [s["status"] for s in far_side.statuses] == ["open"]


async def test_no_reply_completes_the_burst_without_a_message(bot: Bot, far_side: FarSide, database_url: str) -> None:
    far_side.decisions.append({"should_reply": False, "reply": ""})
    await bot.post(incoming(1, "ok gracias 👍"))
    assert await answer(bot, database_url) == {"completed": 1}
    assert far_side.replies == [] and far_side.statuses == []
    (row,) = await buffers(database_url)
    assert (row["status"], row["outcome"], row["reply_content"]) == ("completed", "no_reply", None)


async def test_a_server_without_structured_outputs_gets_plain_text(bot: Bot, far_side: FarSide, database_url: str) -> None:
    far_side.structured = "reject"  # 400 for response_format, as some OpenAI-compatible servers answer
    await bot.post(incoming(1, "Hola"))
    assert await answer(bot, database_url) == {"completed": 1}
    await bot.post(incoming(2, "¿Y envíos?"))
    assert await answer(bot, database_url) == {"completed": 1}
    assert far_side.structured_refusals == 1  # asked once; plain text from then on
    assert all("response_format" not in c for c in far_side.completions)
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola", "echo: ¿Y envíos?"]


async def test_a_server_that_ignores_the_format_still_gets_its_text_sent(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.structured = "ignore"  # answers prose as if response_format were not there
    await bot.post(incoming(1, "Hola"))
    assert await answer(bot, database_url) == {"completed": 1}
    await bot.post(incoming(2, "¿Y envíos?"))
    assert await answer(bot, database_url) == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola", "echo: ¿Y envíos?"]
    # Once ignored, JSON is not asked for again (a model could answer JSON of another shape).
    assert "response_format" in far_side.completions[0] and "response_format" not in far_side.completions[1]


@pytest.fixture
def strict_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, openai_structured_output="on")


@pytest.fixture
async def strict_bot(strict_settings: Settings) -> AsyncIterator[Bot]:
    bot = Bot(Runtime(strict_settings))
    yield bot
    await bot.close()


async def test_structured_output_on_never_sends_prose_it_did_not_ask_for(
    strict_bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.structured = "ignore"
    await strict_bot.post(incoming(1, "Hola"))
    assert await answer(strict_bot, database_url) == {"retry": 1}
    assert far_side.replies == []
    (row,) = await buffers(database_url)
    assert "BadModelOutput" in row["last_error"]


async def test_structured_output_off_sends_no_format(settings: Settings, far_side: FarSide, database_url: str) -> None:
    bot = Bot(Runtime(dataclasses.replace(settings, openai_structured_output="off")))
    try:
        await bot.post(incoming(1, "Hola"))
        assert await answer(bot, database_url) == {"completed": 1}
    finally:
        await bot.close()
    (completion,) = far_side.completions
    assert "response_format" not in completion and "handoff" not in completion["messages"][0]["content"]
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola"]


async def test_no_personal_data_at_info_on_the_new_paths(
    bot: Bot, far_side: FarSide, database_url: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.conftest import chatwoot_fixture
    from tests.integration.test_takeover import human

    monkeypatch.setenv("LOG_LEVEL", "INFO")
    configure_logging()  # as every entry point does
    voice = chatwoot_fixture("message_created_incoming_audio")
    # Chatwoot's data_url ends in the file's own name, which can name the customer.
    voice["attachments"][0]["data_url"] = far_side.add_media("Maria_Lopez_INE", b"OggS voice:vivo en Calle Falsa 123",
                                                             "audio/ogg")
    far_side.decisions.append({**HANDOFF, "handoff_reason": "María quiere devolver el pedido 5521"})
    with caplog.at_level(logging.INFO):
        await bot.post(voice)
        assert await answer(bot, database_url) == {"completed": 1}
        await bot.post(human(8, "Hola, soy Carlos, te ayudo yo."))
        await bot.post(incoming(7, "mi teléfono es +52 55 1234 5678"))
    assert "completed (handed_off)" in caplog.text and "takeover -> paused" in caplog.text  # INFO did log
    for private in ("Maria_Lopez", "Calle Falsa", "María", "5521", "Carlos", "te ayudo yo", "1234 5678", "Te paso con"):
        assert private not in caplog.text


async def test_a_message_during_a_hand_off_retry_neither_resends_nor_loses_the_hand_off(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.decisions.append(HANDOFF)
    far_side.fail_handoffs = 1
    await bot.post(incoming(1, "Una persona, por favor"))
    assert await answer(bot, database_url) == {"retry": 1}  # the reply left; opening failed
    await bot.post(incoming(2, "¿hola?"))  # the customer writes before the retry
    assert await answer(bot, database_url) == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.public_replies()] == ["Te paso con una persona del equipo."]
    assert [s["status"] for s in far_side.statuses] == ["open"] and len(far_side.private_notes()) == 1
    rows = await buffers(database_url)
    assert [(r["status"], r["outcome"], r["message_count"]) for r in rows] == [
        ("completed", "handed_off", 1), ("cancelled", None, 1)]  # the new message waits for the human
    assert rows[0]["reply_content"] == "Te paso con una persona del equipo." and rows[0]["discarded_drafts"] == 0


async def test_a_late_resolve_older_than_the_hand_off_does_not_lift_it(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    from datetime import datetime, timedelta, timezone

    from tests.integration.test_takeover import status_event

    far_side.decisions.append(HANDOFF)
    await bot.post(incoming(1, "Una persona"))
    assert await answer(bot, database_url) == {"completed": 1}
    older = status_event("resolved", "conversation_resolved", at=datetime.now(timezone.utc) - timedelta(minutes=1))
    assert await bot.status_of(older) == "stale"
    assert await bot.status_of(incoming(2, "¿hola?")) == "held"


async def test_json_in_a_code_fence_from_a_server_ignoring_the_format_is_decoded(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.structured = "fenced"  # ignores response_format, but the model still writes JSON, fenced
    await bot.post(incoming(1, "Hola"))
    assert await answer(bot, database_url) == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola"]
