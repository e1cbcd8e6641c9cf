"""The SQL functions' semantics, on a real PostgreSQL, through the store."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest

from shared.db.errors import StoreError
from shared.db.store import BufferStore
from shared.models import ConversationSignal, HumanMessage, InboundMessage, MessageEdit, Reply
from tests.conftest import FAST_TIMING
from tests.support.sql import buffers, execute, fetch, make_due, set_flag

WINDOW = timedelta(seconds=FAST_TIMING.buffer_window_seconds)
MAX_AGE = timedelta(seconds=FAST_TIMING.buffer_max_age_seconds)


def msg(external_id: str, content: str = "hi", conversation: str = "431", account: str = "3") -> InboundMessage:
    return InboundMessage("chatwoot", account, conversation, external_id, content)


async def test_burst_collects_in_one_buffer_with_sliding_window(store: BufferStore, database_url: str) -> None:
    results = [await store.ingest(msg(f"m{i}", f"part {i}")) for i in range(3)]
    assert {r.buffer_id for r in results} == {results[0].buffer_id}
    assert [r.message_count for r in results] == [1, 2, 3]
    (row,) = await buffers(database_url)
    assert row["status"] == "active" and row["message_count"] == 3
    assert row["due_at"] == row["last_message_at"] + WINDOW  # pushed by the last message
    assert not any(r.flush_now for r in results)


async def test_redelivery_is_a_no_op(store: BufferStore, database_url: str) -> None:
    first = await store.ingest(msg("m1", "original"))
    again = await store.ingest(msg("m1", "changed text, same id"))
    assert again.accepted is False and again.buffer_id == first.buffer_id
    rows = await fetch(database_url, "select content from public.buffered_messages")
    assert rows == [{"content": "original"}]
    assert (await buffers(database_url))[0]["message_count"] == 1


async def test_same_external_id_in_another_account_is_another_message(store: BufferStore) -> None:
    a = await store.ingest(msg("m1", account="3"))
    b = await store.ingest(msg("m1", account="4"))
    assert b.accepted and a.buffer_id != b.buffer_id


async def test_max_age_caps_the_window(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    await execute(database_url, "update public.message_buffer set first_message_at = now() - interval '2.9 seconds'")
    await store.ingest(msg("m2"))
    (row,) = await buffers(database_url)
    assert row["due_at"] == row["first_message_at"] + MAX_AGE
    assert row["due_at"] < row["last_message_at"] + WINDOW


async def test_max_count_closes_the_buffer_at_once(store: BufferStore, database_url: str) -> None:
    await execute(database_url, "update public.buffer_settings set setting_value = 3 where setting_name = 'buffer_max_messages'")
    results = [await store.ingest(msg(f"m{i}")) for i in range(4)]
    assert results[2].due_at is not None and results[2].message_count == 3
    rows = await buffers(database_url)
    assert [r["message_count"] for r in rows] == [3, 1]  # the 4th opened a new buffer
    assert rows[0]["due_at"] <= rows[0]["last_message_at"]


async def test_message_while_processing_opens_a_new_buffer(store: BufferStore, database_url: str) -> None:
    first = await store.ingest(msg("m1"))
    await make_due(database_url)
    (claimed,) = await store.claim_due_buffers(10, 30)
    later = await store.ingest(msg("m2"))
    assert later.buffer_id != first.buffer_id == claimed.buffer_id
    await make_due(database_url)
    # The newer buffer waits until the conversation's older one is finished: replies keep order.
    assert await store.claim_due_buffers(10, 30) == []
    assert await store.complete_buffer(claimed, "reply one")
    (second,) = await store.claim_due_buffers(10, 30)
    assert second.buffer_id == later.buffer_id


async def test_prompt_has_history_and_burst_in_order(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1", "Hola"))
    await store.ingest(msg("m2", "¿envíos?"))
    await make_due(database_url)
    (first,) = await store.claim_due_buffers(10, 30)
    await store.complete_buffer(first, "Sí, enviamos.")
    await store.ingest(msg("m3", "¿y a Monterrey?"))
    await store.ingest(msg("other", "another conversation", conversation="999"))
    await make_due(database_url)
    claimed = {b.conversation_id: b for b in await store.claim_due_buffers(10, 30)}
    turns = await store.buffer_prompt(claimed["431"].buffer_id, 10)
    assert [(t.role, t.content, t.in_burst) for t in turns] == [
        ("user", "Hola", False), ("user", "¿envíos?", False), ("assistant", "Sí, enviamos.", False),
        ("user", "¿y a Monterrey?", True)]
    trimmed = await store.buffer_prompt(claimed["431"].buffer_id, 1)
    assert [t.content for t in trimmed] == ["Sí, enviamos.", "¿y a Monterrey?"]


async def test_burst_is_ordered_by_platform_time_not_arrival(store: BufferStore, database_url: str) -> None:
    from datetime import datetime, timezone

    late = datetime(2026, 4, 20, 15, 2, 20, tzinfo=timezone.utc)
    early = datetime(2026, 4, 20, 15, 2, 10, tzinfo=timezone.utc)
    await store.ingest(InboundMessage("chatwoot", "3", "431", "b", "second", sent_at=late))
    await store.ingest(InboundMessage("chatwoot", "3", "431", "a", "first", sent_at=early))
    await make_due(database_url)
    (buffer,) = await store.claim_due_buffers(10, 30)
    assert [t.content for t in await store.buffer_prompt(buffer.buffer_id, 10)] == ["first", "second"]


async def test_failure_retries_with_backoff_then_fails_for_good(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    statuses = []
    for attempt in range(1, 4):
        await make_due(database_url)
        (buffer,) = await store.claim_due_buffers(10, 30)
        assert buffer.attempts == attempt
        statuses.append(await store.fail_buffer(buffer, f"boom {attempt}", max_attempts=3,
                                                backoff_seconds=60, reply_draft="draft"))
        if attempt == 1:
            (row,) = await buffers(database_url)
            assert row["due_at"] - row["last_message_at"] > timedelta(seconds=55)  # waiting out the backoff
            assert await store.claim_due_buffers(10, 30) == []
    assert statuses == ["processing", "processing", "failed"]
    (row,) = await buffers(database_url)
    assert row["status"] == "failed" and row["last_error"] == "boom 3" and row["reply_content"] == "draft"


async def test_retry_keeps_the_generated_reply(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    await make_due(database_url)
    (buffer,) = await store.claim_due_buffers(10, 30)
    await store.fail_buffer(buffer, "chatwoot 500", max_attempts=3, backoff_seconds=0.01, reply_draft="the reply")
    await make_due(database_url)
    (again,) = await store.claim_due_buffers(10, 30)
    assert again.reply_draft == "the reply"


async def test_stale_lease_cannot_extend_complete_or_fail(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    await make_due(database_url)
    (buffer,) = await store.claim_due_buffers(10, 30)
    await execute(database_url, "update public.message_buffer set lease_expires_at = now() - interval '1 second'")
    assert await store.reclaim_expired_leases(max_attempts=3) == [(buffer.buffer_id, "processing")]
    (taken_over,) = await store.claim_due_buffers(10, 30)
    assert taken_over.attempts == 2
    assert not await store.extend_lease(buffer, 30)
    assert not await store.complete_buffer(buffer, "late reply")
    assert await store.fail_buffer(buffer, "late", max_attempts=3, backoff_seconds=1) is None
    assert await store.complete_buffer(taken_over, "reply")
    (row,) = await buffers(database_url)
    assert row["status"] == "completed" and row["reply_content"] == "reply"


async def test_expired_lease_on_last_attempt_fails(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    await make_due(database_url)
    await store.claim_due_buffers(10, 30)
    await execute(database_url, "update public.message_buffer set lease_expires_at = now() - interval '1 second'")
    (reclaimed,) = await store.reclaim_expired_leases(max_attempts=1)
    assert reclaimed[1] == "failed"
    (row,) = await buffers(database_url)
    assert "lease expired" in row["last_error"]


async def test_seconds_until_next_due(store: BufferStore, database_url: str) -> None:
    assert await store.seconds_until_next_due() is None
    await store.ingest(msg("m1"))
    seconds = await store.seconds_until_next_due()
    assert seconds is not None and 0 < seconds <= FAST_TIMING.buffer_window_seconds
    await make_due(database_url)
    assert await store.seconds_until_next_due() == 0


async def test_buffering_off_answers_each_message_alone(store: BufferStore, database_url: str) -> None:
    await set_flag(database_url, "message_buffering", False)
    a = await store.ingest(msg("m1"))
    b = await store.ingest(msg("m2"))
    assert a.buffer_id != b.buffer_id
    assert a.flush_now is False  # the scheduler is on: it picks them up, the webhook need not
    claimed = await store.claim_due_buffers(10, 30)
    assert [c.buffer_id for c in claimed] == [a.buffer_id]  # one at a time per conversation
    assert claimed[0].message_count == 1


async def test_fallback_count_or_age(store: BufferStore, database_url: str) -> None:
    # A window longer than the fallback age, so the age rule is what sets the due time.
    await execute(database_url, "update public.buffer_settings set setting_value = 2 where setting_name = 'buffer_window_seconds'")
    await set_flag(database_url, "buffer_sweeper", False)
    first = await store.ingest(msg("m1"))
    assert not first.flush_now
    assert first.due_at is not None
    second = await store.ingest(msg("m2"))
    assert second.flush_now and second.buffer_id == first.buffer_id  # 2 messages: flush now
    lone = await store.ingest(msg("x1", conversation="77"))
    (row,) = [r for r in await buffers(database_url) if r["id"] == lone.buffer_id]
    assert row["due_at"] == row["first_message_at"] + timedelta(seconds=FAST_TIMING.fallback_flush_age_seconds)
    assert lone.others_due  # the flushed buffer of conversation 431 waits for a pass


async def test_fallback_age_rule_on_arrival(store: BufferStore, database_url: str) -> None:
    await execute(database_url, "update public.buffer_settings set setting_value = 5 where setting_name = 'fallback_flush_messages'")
    await set_flag(database_url, "buffer_sweeper", False)
    await store.ingest(msg("m1"))
    await execute(database_url, "update public.message_buffer set first_message_at = now() - interval '1.5 seconds',"
                                " due_at = now() + interval '1 hour'")
    later = await store.ingest(msg("m2"))
    assert later.flush_now  # older than FALLBACK_FLUSH_AGE_SECONDS: flushed on arrival


async def test_settings_table_wins_over_environment(store: BufferStore, database_url: str) -> None:
    await execute(database_url, "update public.buffer_settings set setting_value = 2 where setting_name = 'buffer_window_seconds'")
    result = await store.ingest(msg("m1"))
    (row,) = await buffers(database_url)
    assert row["due_at"] == row["last_message_at"] + timedelta(seconds=2)
    assert result.settings_error is None
    config = await store.runtime_config()
    assert config.sweep_interval_seconds == FAST_TIMING.sweep_interval_seconds


async def test_settings_back_and_forth_between_table_and_environment(store: BufferStore, database_url: str) -> None:
    # ingest_message reads effective_settings() only while a value is set in the table; both
    # paths must give the same shape of values on the same pooled connections, in either order.
    windows = {}
    for step, value in enumerate([None, 2, None, 1]):
        await execute(database_url, "update public.buffer_settings set setting_value = $1"
                                    " where setting_name = 'buffer_window_seconds'", value)
        result = await store.ingest(msg(f"m{step}", conversation=f"c{step}"))
        (row,) = [r for r in await buffers(database_url) if r["id"] == result.buffer_id]
        windows[step] = row["due_at"] - row["last_message_at"]
        assert result.settings_error is None
    assert windows == {0: WINDOW, 1: timedelta(seconds=2), 2: WINDOW, 3: timedelta(seconds=1)}


@pytest.mark.parametrize(
    ("updates", "error"),
    [
        ({"buffer_window_seconds": -1}, "check"),
        ({"buffer_window_seconds": 0}, "check"),
        ({"buffer_window_seconds": 60, "buffer_max_age_seconds": 30}, "max_age"),
        ({"buffer_max_messages": 2.5}, "whole"),
    ],
)
async def test_impossible_settings_are_refused_on_save(database_url: str, updates: dict, error: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.PostgresError, match=error):
            async with conn.transaction():
                for name, value in updates.items():
                    await conn.execute("update public.buffer_settings set setting_value = $2 where setting_name = $1",
                                       name, value)
        rows = await conn.fetch("select setting_value from public.buffer_settings where setting_value is not null")
        assert rows == []  # nothing changed
    finally:
        await conn.close()


async def test_table_value_impossible_with_environment_is_not_used(store: BufferStore, database_url: str) -> None:
    # Valid alone (window 10 s), impossible with the environment's max age (3 s): refused loudly.
    await execute(database_url, "update public.buffer_settings set setting_value = 10 where setting_name = 'buffer_window_seconds'")
    result = await store.ingest(msg("m1"))
    assert result.settings_error and "buffer_max_age_seconds must be greater" in result.settings_error
    (row,) = await buffers(database_url)
    assert row["due_at"] == row["last_message_at"] + WINDOW  # the environment's values stood
    assert (await store.runtime_config()).settings_error == result.settings_error


async def test_database_errors_become_store_errors(store: BufferStore) -> None:
    with pytest.raises(StoreError) as caught:
        await store.claim_due_buffers(-1, 30)
    assert caught.value.code is not None and "claim_due_buffers" in str(caught.value)


# --- conversation behaviour, through both stores -----------------------------------------------

def signal(kind: str, *, account: str | None = "3", inbox: str | None = "12", conversation: str = "431",
           human_message: str | None = None) -> ConversationSignal:
    message = HumanMessage(human_message, "Te ayudo yo") if human_message else None
    return ConversationSignal("chatwoot", account, inbox, conversation, kind, f"because {kind}", None, message)


async def test_takeover_by_inbox_pauses_holds_and_cancels(store: BufferStore, database_url: str) -> None:
    first = await store.ingest(dataclasses.replace(msg("m1"), inbox_id="12"))
    result = await store.record_signal(signal("takeover", account=None), pause_seconds=60)
    assert (result.outcome, result.account_id, result.cancelled) == ("paused", "3", 1)
    held = await store.ingest(msg("m2"))
    assert held.accepted and held.held_reason == "bot paused: because takeover" and held.due_at is None
    assert await store.claim_due_buffers(10, 30) == []
    rows = await buffers(database_url)
    assert [(r["id"] == first.buffer_id, r["status"]) for r in rows] == [(True, "cancelled"), (False, "cancelled")]
    resumed = await store.record_signal(signal("returned_to_bot"), pause_seconds=60)
    assert resumed.outcome == "resumed" and (await store.ingest(msg("m3"))).held_reason is None


async def test_a_human_message_is_stored_once_as_history(store: BufferStore, database_url: str) -> None:
    assert (await store.record_signal(signal("takeover", human_message="h1"), 60)).outcome == "paused"
    assert (await store.record_signal(signal("takeover", human_message="h1"), 60)).outcome == "duplicate"
    assert await fetch(database_url, "select author, content from public.buffered_messages") == [
        {"author": "agent", "content": "Te ayudo yo"}]


async def test_unknown_conversation_and_unknown_signal(store: BufferStore) -> None:
    assert (await store.record_signal(signal("takeover", account=None, inbox="77"), 60)).outcome == "unknown_conversation"
    with pytest.raises(StoreError, match="unknown conversation signal"):
        await store.record_signal(signal("vanished"), 60)


async def test_fence_verdicts(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    await make_due(database_url)
    (claimed,) = await store.claim_due_buffers(10, 30)
    assert await store.fence_reply(claimed, 30) == "send"
    await store.ingest(msg("m2"))  # the customer writes again before the reply left
    assert await store.fence_reply(claimed, 30) == "merged"
    assert await store.fence_reply(claimed, 30) == "lease_lost"  # that lease is over
    await make_due(database_url)
    (again,) = await store.claim_due_buffers(10, 30)
    assert (again.buffer_id, again.message_count, again.attempts) == (claimed.buffer_id, 2, 1)
    await store.record_signal(signal("takeover"), 60)
    assert await store.fence_reply(again, 30) == "cancelled"


async def test_complete_with_outcomes_and_a_kept_hand_off_draft(store: BufferStore, database_url: str) -> None:
    await store.ingest(msg("m1"))
    await make_due(database_url)
    (claimed,) = await store.claim_due_buffers(10, 30)
    await store.fail_buffer(claimed, "chatwoot 500", max_attempts=3, backoff_seconds=0.01,
                            reply_draft=Reply("Te paso con alguien", "pidió una persona"))
    await make_due(database_url)
    (retry,) = await store.claim_due_buffers(10, 30)
    assert retry.draft == Reply("Te paso con alguien", "pidió una persona") and not retry.reply_sent
    assert await store.mark_reply_sent(retry)
    assert await store.complete_buffer(retry, retry.draft, pause_seconds=60)
    (row,) = await buffers(database_url)
    assert (row["outcome"], row["reply_content"]) == ("handed_off", "Te paso con alguien")
    assert (await store.ingest(msg("m2"))).held_reason == "bot paused: handed off by the bot: pidió una persona"


async def test_transcript_edit_and_dead_letter(store: BufferStore, database_url: str) -> None:
    voice = InboundMessage("chatwoot", "3", "431", "v1", None, attachments=({"file_type": "audio"},))
    await store.ingest(voice)
    assert await store.edit_waiting_message(MessageEdit("chatwoot", "3", "v1", "typed after all",
                                                        ({"file_type": "audio"},))) == "updated"
    await make_due(database_url)
    (claimed,) = await store.claim_due_buffers(10, 30)
    assert await store.save_transcript(claimed, "v1", 0, "hola")
    assert not await store.save_transcript(claimed, "v1", 5, "no such attachment")
    (turn,) = await store.buffer_prompt(claimed.buffer_id, 10)
    assert (turn.content, turn.attachments, turn.external_id) == ("typed after all",
                                                                  ({"file_type": "audio", "transcript": "hola"},), "v1")
    assert await store.edit_waiting_message(MessageEdit("chatwoot", "3", "v1", "too late")) == "not_waiting"
    body = b"\x00\xff not json \xe9"
    dead = await store.record_dead_letter("chatwoot", "body is not JSON", body)
    (letter,) = await fetch(database_url, "select id, body from public.webhook_dead_letters")
    assert letter["id"] == dead and bytes(letter["body"]) == body


async def test_a_conversation_without_an_inbox_gets_it_from_its_next_message(store: BufferStore, database_url: str) -> None:
    await store.record_signal(signal("resolved", inbox=None), 60)
    await store.ingest(dataclasses.replace(msg("m1"), inbox_id="12"))
    assert (await store.record_signal(signal("takeover", account=None), 60)).outcome == "paused"


async def test_an_edit_keeps_a_transcript_of_the_same_file(store: BufferStore, database_url: str) -> None:
    voice = {"file_type": "audio", "data_url": "https://chat.example/a.ogg"}
    await store.ingest(InboundMessage("chatwoot", "3", "431", "v1", None, attachments=(voice,)))
    await make_due(database_url)
    (claimed,) = await store.claim_due_buffers(10, 30)
    assert await store.save_transcript(claimed, "v1", 0, "hola")
    await store.ingest(msg("m2"))  # the customer writes again: the draft is discarded, the burst waits
    assert await store.fence_reply(claimed, 30) == "merged"
    chatwoot_transcribed = {**voice, "transcribed_text": "Hola."}
    assert await store.edit_waiting_message(MessageEdit("chatwoot", "3", "v1", None, (chatwoot_transcribed,))) == "updated"
    assert await store.edit_waiting_message(MessageEdit("chatwoot", "3", "v1", None, (chatwoot_transcribed,))) == "unchanged"
    (row,) = await fetch(database_url, "select attachments from public.buffered_messages where external_id = 'v1'")
    assert json.loads(row["attachments"]) == [{**chatwoot_transcribed, "transcript": "hola"}]
    other_file = {"file_type": "audio", "data_url": "https://chat.example/b.ogg"}
    assert await store.edit_waiting_message(MessageEdit("chatwoot", "3", "v1", None, (other_file,))) == "updated"
    (row,) = await fetch(database_url, "select attachments from public.buffered_messages where external_id = 'v1'")
    assert json.loads(row["attachments"]) == [other_file]


async def test_the_next_due_time_counts_only_bursts_a_claim_could_take(store: BufferStore, database_url: str) -> None:
    """A newer burst waits for its conversation's older one: its due time must not wake a sweeper
    that could claim nothing (it would spin for as long as the older one waits to retry)."""
    await store.ingest(msg("m1"))
    await make_due(database_url)
    (older,) = await store.claim_due_buffers(10, 30)
    await store.fail_buffer(older, "boom", max_attempts=5, backoff_seconds=3600)  # waits an hour to retry
    await store.ingest(msg("m2"))  # opens the conversation's next burst
    await make_due(database_url, (await buffers(database_url))[-1]["id"])
    assert await store.claim_due_buffers(10, 30) == []  # it waits for the older one
    seconds = await store.seconds_until_next_due()
    assert seconds is not None and seconds > 3000, seconds
