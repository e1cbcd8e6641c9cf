"""Humans take over: the bot never talks over an agent, and comes back when the conversation is
resolved, handed back, or after BOT_PAUSE_AFTER_HUMAN_SECONDS. Signed webhooks in, the real
database, the far side faked over HTTP."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.conftest import chatwoot_fixture, incoming
from tests.support.far_side import FarSide
from tests.support.sql import buffers, execute, fetch, make_due
from tests.support.webhook import Bot


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def human(message_id: int, content: str, conversation_id: int = 431, at: datetime | None = None) -> dict[str, Any]:
    payload = chatwoot_fixture("message_created_outgoing_human_agent")
    payload.update(id=message_id, content=content, created_at=iso(at or datetime.now(timezone.utc)))
    payload["conversation"] = {**payload["conversation"], "id": conversation_id}
    return payload


def status_event(status: str, event: str = "conversation_status_changed", conversation_id: int = 431,
                 at: datetime | None = None) -> dict[str, Any]:
    """Chatwoot's conversation event: the conversation itself, with no account object."""
    payload = chatwoot_fixture("conversation_status_changed")
    payload.update(event=event, status=status, id=conversation_id,
                   updated_at=(at or datetime.now(timezone.utc)).timestamp())
    return payload


async def pause_of(database_url: str, conversation_id: str = "431") -> dict[str, Any]:
    (row,) = await fetch(database_url, "select * from public.conversation_state where conversation_id = $1",
                         conversation_id)
    return row


async def answer_what_is_due(bot: Bot, database_url: str) -> dict[str, int]:
    await make_due(database_url)
    return await bot.sweep()


async def test_agent_reply_while_pending_cancels_the_burst_and_pauses_the_bot(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    # Community Edition: the agent answers and the conversation stays `pending`.
    assert await bot.status_of(incoming(1, "Hola, ¿tienen la talla 27?")) == "buffered"
    response = await bot.post(human(2, "Hola, soy Carlos, te ayudo yo."))
    assert response.json() == {"status": "paused", "cancelled": 1}

    # The customer answers the human: stored, never answered by the bot.
    held = await bot.post(incoming(3, "Gracias Carlos, ¿y en negro?"))
    assert held.json()["status"] == "held" and "bot paused: a human agent replied" in held.json()["reason"]
    assert await answer_what_is_due(bot, database_url) == {}
    assert far_side.replies == [] and far_side.completions == []

    rows = await buffers(database_url)
    assert [(r["status"], r["cancel_reason"]) for r in rows] == [
        ("cancelled", "a human agent replied"),
        ("cancelled", "a human agent replied"),  # the agent's own message, kept as history
        ("cancelled", "bot paused: a human agent replied")]
    state = await pause_of(database_url)
    pause = state["bot_paused_until"] - datetime.now(timezone.utc)
    assert timedelta(hours=23, minutes=59) < pause <= timedelta(hours=24)  # BOT_PAUSE_AFTER_HUMAN_SECONDS
    authors = await fetch(database_url, "select external_id, author from public.buffered_messages order by external_id")
    assert authors == [{"external_id": "1", "author": "customer"}, {"external_id": "2", "author": "agent"},
                       {"external_id": "3", "author": "customer"}]


async def test_reply_from_the_phone_is_a_takeover(bot: Bot, far_side: FarSide, database_url: str) -> None:
    assert await bot.status_of(chatwoot_fixture("message_created_incoming_reply_to")) == "buffered"
    response = await bot.post(chatwoot_fixture("message_created_outgoing_external_echo"))
    assert response.json() == {"status": "paused", "cancelled": 1}
    assert await answer_what_is_due(bot, database_url) == {}
    assert far_side.replies == []
    assert (await pause_of(database_url, "318"))["pause_reason"] == "the business replied from the phone"


async def test_status_change_while_waiting_finds_the_conversation_by_its_inbox(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    event = status_event("open")
    assert event["messages"] == [] and "account" not in event  # nothing names the account
    assert (await bot.post(event)).json() == {"status": "paused", "cancelled": 1}
    assert await answer_what_is_due(bot, database_url) == {}
    assert far_side.replies == []
    (row,) = await buffers(database_url)
    assert row["status"] == "cancelled" and row["cancel_reason"] == "conversation status changed to 'open'"


async def test_status_event_of_a_conversation_never_seen_changes_nothing(bot: Bot, database_url: str) -> None:
    assert await bot.status_of(status_event("open", conversation_id=999)) == "unknown_conversation"
    assert await fetch(database_url, "select * from public.conversation_state") == []


async def test_the_bots_own_echo_is_not_a_takeover(bot: Bot, far_side: FarSide, database_url: str) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    assert await answer_what_is_due(bot, database_url) == {"completed": 1}
    (reply,) = far_side.replies
    # Chatwoot echoes our reply back, as an outgoing agent_bot message carrying our marker.
    echo = chatwoot_fixture("message_created_outgoing_agent_bot")
    echo.update(id=50, content=reply["body"]["content"], content_attributes=reply["body"]["content_attributes"])
    assert (await bot.post(echo)).json() == {"status": "echo known"}  # proof it left; never a takeover
    assert await bot.status_of(incoming(2, "¿y a Monterrey?")) == "buffered"
    assert await answer_what_is_due(bot, database_url) == {"completed": 1}
    assert len(far_side.replies) == 2


async def test_resolve_resumes_and_the_model_sees_what_the_human_said(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    assert await bot.status_of(incoming(1, "Quiero devolver unos zapatos")) == "buffered"
    assert await bot.status_of(human(2, "Claro, te mando la etiqueta por correo.")) == "paused"
    assert await bot.status_of(incoming(3, "Perfecto, gracias")) == "held"
    assert await bot.status_of(status_event("resolved", "conversation_resolved")) == "resumed"

    assert await bot.status_of(incoming(4, "Hola de nuevo, ¿tienen sandalias?")) == "buffered"
    assert await answer_what_is_due(bot, database_url) == {"completed": 1}
    assert len(far_side.replies) == 1
    history = [(m["role"], m["content"]) for m in far_side.completions[0]["messages"][1:]]
    assert history == [
        ("user", "Quiero devolver unos zapatos"),
        ("assistant", "[human agent] Claro, te mando la etiqueta por correo."),
        ("user", "Perfecto, gracias"),
        ("user", "Hola de nuevo, ¿tienen sandalias?")]


async def test_handed_back_to_pending_resumes(bot: Bot, far_side: FarSide, database_url: str) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    assert await bot.status_of(status_event("open")) == "paused"
    assert await bot.status_of(status_event("pending")) == "resumed"
    assert await bot.status_of(incoming(2, "¿Siguen ahí?")) == "buffered"
    assert await answer_what_is_due(bot, database_url) == {"completed": 1}
    assert len(far_side.replies) == 1
    # The burst cancelled by the takeover stays history; only the new message is the burst.
    (completion,) = far_side.completions
    assert [m["content"] for m in completion["messages"][1:]] == ["Hola", "¿Siguen ahí?"]
    assert [r["status"] for r in await buffers(database_url)] == ["cancelled", "completed"]


async def test_the_pause_ends_by_itself(bot: Bot, far_side: FarSide, database_url: str) -> None:
    assert await bot.status_of(human(2, "Te ayudo yo")) == "paused"
    assert await bot.status_of(incoming(3, "ok")) == "held"
    # BOT_PAUSE_AFTER_HUMAN_SECONDS later:
    await execute(database_url, "update public.conversation_state set bot_paused_until = now() - interval '1 second'")
    assert await bot.status_of(incoming(4, "¿me ayudan con otra cosa?")) == "buffered"
    assert await answer_what_is_due(bot, database_url) == {"completed": 1}


async def test_a_burst_being_answered_when_a_human_writes_is_not_sent(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.openai_latency = 0.5
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    await make_due(database_url)
    sweep = asyncio.create_task(bot.sweep())
    while not await fetch(database_url, "select 1 from public.message_buffer where status = 'processing'"):
        await asyncio.sleep(0.01)
    assert (await bot.post(human(2, "Hola, soy Carlos"))).json() == {"status": "paused", "cancelled": 0}
    assert await sweep == {"cancelled": 1}
    assert far_side.replies == [] and len(far_side.completions) == 1  # the draft was written, never sent
    first = (await buffers(database_url))[0]
    assert first["status"] == "cancelled"
    assert first["cancel_reason"] == "bot paused before the reply was sent: a human agent replied"


async def test_a_late_delivered_older_signal_changes_nothing(bot: Bot, far_side: FarSide, database_url: str) -> None:
    now = datetime.now(timezone.utc)
    assert await bot.status_of(human(2, "Te ayudo yo", at=now - timedelta(minutes=5))) == "paused"
    assert await bot.status_of(status_event("resolved", "conversation_resolved", at=now - timedelta(minutes=1))) == "resumed"
    # The agent's message of 5 minutes ago, delivered again late (another id, same moment): stale.
    assert await bot.status_of(human(5, "(late copy)", at=now - timedelta(minutes=5))) == "stale"
    assert (await pause_of(database_url))["bot_paused_until"] is None
    assert await bot.status_of(incoming(3, "Hola otra vez")) == "buffered"


async def test_resolve_cancels_what_was_written_before_it_not_after(bot: Bot, database_url: str) -> None:
    now = datetime.now(timezone.utc)
    assert await bot.status_of(incoming(1, "antes", created_at=iso(now - timedelta(seconds=30)))) == "buffered"
    response = await bot.post(status_event("resolved", "conversation_resolved", at=now - timedelta(seconds=10)))
    assert response.json() == {"status": "resumed", "cancelled": 1}
    # Resolved, then the customer wrote again (Chatwoot reopens it as pending); its resolve event
    # arrives after the new message: the new message must still be answered.
    assert await bot.status_of(incoming(2, "después", created_at=iso(now))) == "buffered"
    late = await bot.post(status_event("resolved", "conversation_resolved", at=now - timedelta(seconds=5)))
    assert late.json() == {"status": "resumed", "cancelled": 0}
    assert [r["status"] for r in await buffers(database_url)] == ["cancelled", "active"]


@pytest.mark.parametrize("fixture", ["message_created_private_note", "message_created_outgoing_agent_bot",
                                     "webwidget_triggered"])
async def test_neither_private_notes_nor_bots_pause_the_bot(bot: Bot, fixture: str, database_url: str) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    assert await bot.status_of(chatwoot_fixture(fixture)) == "ignored"
    assert [r["status"] for r in await buffers(database_url)] == ["active"]


async def test_a_message_showing_the_conversation_is_open_cancels_what_waits(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    # The status event was lost (Chatwoot does not retry a timeout); the next message says it all.
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    opened = incoming(2, "¿sigue ahí Carlos?")
    opened["conversation"] = {**opened["conversation"], "status": "open"}
    assert await bot.status_of(opened) == "held"
    assert await answer_what_is_due(bot, database_url) == {}
    assert far_side.replies == []
    assert [(r["status"], r["cancel_reason"]) for r in await buffers(database_url)] == [
        ("cancelled", "conversation status is 'open', not the bot's")] * 2


async def test_a_pause_set_by_hand_in_studio_still_stops_the_open_burst(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    # Nothing cancelled the open burst (no takeover event): the fence sees the pause before sending.
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    await execute(database_url, "update public.conversation_state set bot_paused_until = now() + interval '1 hour',"
                                " pause_reason = 'paused by an operator'")
    assert await bot.status_of(incoming(2, "¿hay alguien?")) == "buffered"  # joins the open burst
    assert await answer_what_is_due(bot, database_url) == {"cancelled": 1}
    assert far_side.replies == []
    (row,) = await buffers(database_url)
    assert row["cancel_reason"] == "bot paused before the reply was sent: paused by an operator"
    assert await bot.status_of(incoming(3, "¿hola?")) == "held"  # a new burst is not even opened
