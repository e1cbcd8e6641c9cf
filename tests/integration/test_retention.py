"""Retention: old finished bursts go, in small batches; unfinished ones stay, whatever their age;
so do dead letters and conversations with nothing left and no pause in force."""

from __future__ import annotations

import dataclasses

from shared.config import Settings
from shared.db.store import BufferStore
from shared.models import ConversationSignal, InboundMessage
from shared.runtime import Runtime
from tests.support.sql import execute, fetch


async def age_everything(dsn: str, days: int) -> None:
    await execute(dsn, f"update public.message_buffer set created_at = now() - interval '{days} days'")


async def seed(store: BufferStore, dsn: str, conversations: int) -> None:
    for n in range(conversations):
        await store.ingest(InboundMessage("chatwoot", "3", str(n), f"m{n}", "hola"))
    await execute(dsn, "update public.message_buffer set due_at = now() - interval '1 second'")
    for buffer in await store.claim_due_buffers(conversations, 30):
        await store.complete_buffer(buffer, "respuesta")


async def counts(dsn: str) -> tuple[int, int]:
    rows = await fetch(dsn, "select (select count(*) from public.message_buffer) as b,"
                            " (select count(*) from public.buffered_messages) as m")
    return rows[0]["b"], rows[0]["m"]


async def test_purge_in_batches_keeps_recent_and_unfinished(store: BufferStore, database_url: str) -> None:
    await seed(store, database_url, 5)
    await age_everything(database_url, 40)
    await store.ingest(InboundMessage("chatwoot", "3", "old-but-waiting", "w1", "¿hola?"))
    await execute(database_url, "update public.message_buffer set created_at = now() - interval '40 days'"
                                " where status = 'active'")
    await store.ingest(InboundMessage("chatwoot", "3", "recent", "r1", "hola"))  # recent, active

    month = 30 * 86400
    assert await store.purge_finished_buffers(month, 2) == 2
    assert await store.purge_finished_buffers(month, 2) == 2
    assert await store.purge_finished_buffers(month, 2) == 1
    assert await store.purge_finished_buffers(month, 2) == 0
    rows = await fetch(database_url, "select conversation_id, status from public.message_buffer order by id")
    assert rows == [{"conversation_id": "old-but-waiting", "status": "active"},
                    {"conversation_id": "recent", "status": "active"}]
    assert await counts(database_url) == (2, 2)  # their messages went with them


async def test_the_sweeper_purges(settings: Settings, database_url: str) -> None:
    runtime = Runtime(dataclasses.replace(settings, retention_days=1, purge_batch_size=100))
    await seed(runtime.store, database_url, 3)
    await age_everything(database_url, 2)
    await runtime.new_sweeper().run_once()
    await runtime.close()
    assert await counts(database_url) == (0, 0)


async def test_cancelled_bursts_dead_letters_and_idle_conversations_go_too(store: BufferStore, database_url: str) -> None:
    await store.ingest(InboundMessage("chatwoot", "3", "held", "h1", "hola", hold_reason="conversation is open"))
    await store.ingest(InboundMessage("chatwoot", "3", "paused", "p1", "hola"))
    await store.record_signal(ConversationSignal("chatwoot", "3", None, "paused", "takeover", "a human"), 86400)
    await store.record_dead_letter("chatwoot", "body is not JSON", b"{oops")
    await age_everything(database_url, 40)
    await execute(database_url, "update public.conversation_state set updated_at = now() - interval '40 days'")
    await execute(database_url, "update public.webhook_dead_letters set received_at = now() - interval '40 days'")

    assert await store.purge_finished_buffers(30 * 86400, 100) == 2  # both bursts were cancelled
    assert await counts(database_url) == (0, 0)
    assert await fetch(database_url, "select * from public.webhook_dead_letters") == []
    # A conversation with nothing left goes; one whose pause is still in force stays.
    rows = await fetch(database_url, "select conversation_id from public.conversation_state")
    assert rows == [{"conversation_id": "paused"}]


async def test_purge_leaves_a_conversation_whose_message_is_being_stored(store: BufferStore, database_url: str) -> None:
    import asyncpg

    await store.record_signal(ConversationSignal("chatwoot", "3", "12", "idle", "resolved", "done"), 60)
    await execute(database_url, "update public.conversation_state set updated_at = now() - interval '40 days'")
    ingest = await asyncpg.connect(database_url)
    try:  # an ingest holds the conversation's lock while it stores a message there
        transaction = ingest.transaction()
        await transaction.start()
        await ingest.execute("select pg_advisory_xact_lock(hashtextextended('chatwoot/3/idle', 0))")
        await store.purge_finished_buffers(30 * 86400, 100)
        assert len(await fetch(database_url, "select * from public.conversation_state")) == 1
        await transaction.rollback()
    finally:
        await ingest.close()
    await store.purge_finished_buffers(30 * 86400, 100)
    assert await fetch(database_url, "select * from public.conversation_state") == []
