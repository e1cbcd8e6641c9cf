"""No stale replies, no starvation: a message that arrives while its conversation's reply is being
written joins it (the draft is discarded and counted), unless the burst is already past max age."""

from __future__ import annotations

import asyncio

from shared.models import InboundMessage
from tests.support.far_side import FarSide
from tests.support.sql import buffers, execute, fetch, make_due, set_flag
from tests.support.webhook import Bot


def msg(external_id: str, content: str) -> InboundMessage:
    return InboundMessage("chatwoot", "3", "431", external_id, content)


async def sweep_while_customer_writes(bot: Bot, database_url: str, *messages: InboundMessage) -> dict[str, int]:
    """One sweep pass with a slow model; the messages arrive while the reply is being written."""
    sweep = asyncio.create_task(bot.sweep())
    while not await fetch(database_url, "select 1 from public.message_buffer where status = 'processing'"):
        await asyncio.sleep(0.01)
    for message in messages:
        await bot.runtime.store.ingest(message)
    return await sweep


async def test_a_message_during_generation_gets_one_reply_written_with_both(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.openai_latency = 0.5
    store = bot.runtime.store
    await store.ingest(msg("m1", "¿Tienen los tenis azules?"))
    await make_due(database_url)
    assert await sweep_while_customer_writes(bot, database_url, msg("m2", "en talla 27")) == {"merged": 1}
    assert far_side.replies == [] and len(far_side.completions) == 1  # the stale draft never left

    (row,) = await buffers(database_url)  # one burst, waiting again for the customer to go quiet
    assert (row["status"], row["message_count"], row["discarded_drafts"], row["attempts"]) == ("active", 2, 1, 0)
    assert row["reply_content"] is None and row["due_at"] > row["last_message_at"]

    far_side.openai_latency = 0
    assert await bot.sweep() == {}  # not due yet: the customer may still be typing
    await make_due(database_url)
    assert await bot.sweep() == {"completed": 1}
    (reply,) = far_side.replies
    assert reply["body"]["content"] == "echo: ¿Tienen los tenis azules? | en talla 27"
    assert len(far_side.completions) == 2  # the discarded draft cost a call, and is counted
    (row,) = await buffers(database_url)
    assert (row["status"], row["discarded_drafts"]) == ("completed", 1)


async def test_a_customer_who_never_stops_typing_is_answered_at_max_age(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    far_side.openai_latency = 0.5
    store = bot.runtime.store
    await store.ingest(msg("m1", "primero"))
    # The burst started longer ago than BUFFER_MAX_AGE_SECONDS (60 s in these tests).
    await execute(database_url, "update public.message_buffer set first_message_at = now() - interval '61 seconds',"
                                " due_at = now() - interval '1 second'")
    assert await sweep_while_customer_writes(bot, database_url, msg("m2", "segundo")) == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: primero"]
    rows = await buffers(database_url)
    assert [(r["status"], r["message_count"], r["discarded_drafts"]) for r in rows] == [
        ("completed", 1, 0), ("active", 1, 0)]  # the newer message is the next burst


async def test_a_merge_never_grows_a_burst_past_the_max_count(bot: Bot, far_side: FarSide, database_url: str) -> None:
    await execute(database_url, "update public.buffer_settings set setting_value = 2 where setting_name = 'buffer_max_messages'")
    far_side.openai_latency = 0.5
    store = bot.runtime.store
    await store.ingest(msg("m1", "uno"))
    await store.ingest(msg("m2", "dos"))  # the cap: due at once
    assert await sweep_while_customer_writes(bot, database_url, msg("m3", "tres")) == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: uno | dos"]


async def test_with_buffering_off_each_message_is_answered_on_its_own(
    bot: Bot, far_side: FarSide, database_url: str
) -> None:
    await set_flag(database_url, "message_buffering", False)
    far_side.openai_latency = 0.5
    store = bot.runtime.store
    await store.ingest(msg("m1", "uno"))
    assert await sweep_while_customer_writes(bot, database_url, msg("m2", "dos")) == {"completed": 2}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: uno", "echo: dos"]


async def test_a_retry_draft_made_stale_is_discarded_too(bot: Bot, far_side: FarSide, database_url: str) -> None:
    far_side.fail_replies = 1
    store = bot.runtime.store
    await store.ingest(msg("m1", "hola"))
    await make_due(database_url)
    assert await bot.sweep() == {"retry": 1}  # the reply is kept as a draft for the retry
    await store.ingest(msg("m2", "¿están?"))
    await make_due(database_url)
    # The newer message's window is over too: the merged burst is due, and the same pass answers it.
    assert await bot.sweep() == {"merged": 1, "completed": 1}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: hola | ¿están?"]
    (row,) = await buffers(database_url)
    assert row["discarded_drafts"] == 1 and len(far_side.completions) == 2
