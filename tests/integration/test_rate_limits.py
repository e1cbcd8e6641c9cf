"""A 429 is not a failure: the burst comes back after Retry-After without spending an attempt;
and one process keeps under Chatwoot's request budget however large the backlog."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import httpx

from shared.channels.chatwoot import ChatwootClient
from shared.ratelimits import DEFAULT_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS, parse_retry_after
from tests.conftest import incoming
from tests.support.far_side import FarSide
from tests.support.sql import buffers, make_due
from tests.support.webhook import Bot


async def test_a_throttled_reply_waits_for_retry_after_and_spends_no_attempt(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    far_side.throttle_replies = 5  # more than MAX_ATTEMPTS (3 in the tests): it must not end failed
    far_side.retry_after = "30"
    for _ in range(5):
        await make_due(database_url)
        assert await bot.sweep() == {"deferred": 1}
        (row,) = await buffers(database_url)
        assert row["status"] == "processing" and row["attempts"] == 0
        waits = (row["due_at"] - datetime.now(timezone.utc)).total_seconds()
        assert 25 < waits <= 30  # as the server asked
    assert "rate limited" in row["last_error"] and len(far_side.completions) == 1  # the draft was kept
    await make_due(database_url)
    assert await bot.sweep() == {"completed": 1}
    assert [r["body"]["content"] for r in far_side.public_replies()] == ["echo: Hola"]
    (row,) = await buffers(database_url)
    assert (row["model_calls"], row["attempts"]) == (1, 1)


async def test_a_throttled_model_is_deferred_too(bot: Bot, far_side: FarSide, database_url: str) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    far_side.throttle_completions = 2  # the SDK's own retry, then ours
    far_side.retry_after = "0"
    await make_due(database_url)
    assert await bot.sweep() == {"deferred": 1}
    (row,) = await buffers(database_url)
    assert row["attempts"] == 0 and row["model_calls"] == 0
    await make_due(database_url)
    assert await bot.sweep() == {"completed": 1}


def test_retry_after_is_read_as_seconds_or_a_date_and_kept_sane() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    assert parse_retry_after("17", now) == 17
    assert parse_retry_after("Tue, 24 Nov 2026 12:01:00 GMT", now) == 60
    assert parse_retry_after("Tue, 24 Nov 2026 11:00:00 GMT", now) == 1  # in the past: retry soon
    assert parse_retry_after(None, now) == parse_retry_after("soon", now) == DEFAULT_RETRY_AFTER_SECONDS
    assert parse_retry_after("99999", now) == MAX_RETRY_AFTER_SECONDS
    assert parse_retry_after("-5", now) == 1 and parse_retry_after("nan", now) == DEFAULT_RETRY_AFTER_SECONDS
    assert parse_retry_after((now + timedelta(seconds=5)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 5


async def test_one_process_keeps_under_its_chatwoot_budget(far_side: FarSide) -> None:
    """60 a minute: the first sixth (10) at once, then one a second, whatever is waiting."""
    async with httpx.AsyncClient() as http:
        client = ChatwootClient(far_side.url, "token", http, requests_per_minute=60)
        started = time.monotonic()
        await asyncio.gather(*(client.set_typing("3", str(n), True) for n in range(13)))
        elapsed = time.monotonic() - started
    assert len(far_side.typing) == 13
    assert 2.5 <= elapsed < 8, elapsed
    assert far_side.typing[9]["at"] - far_side.typing[0]["at"] < 1  # the burst allowance


async def test_a_post_answered_by_a_gateway_timeout_waits_for_the_echo_and_is_not_posted_twice(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    """A 504 says nothing of whether the reply arrived (here it did): the retry waits the send grace
    for Chatwoot's echo, which marks it sent; the next attempt completes it without posting."""
    from tests.conftest import chatwoot_fixture

    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    far_side.gateway_errors_after_reply = 1
    await make_due(database_url)
    assert await bot.sweep() == {"retry": 1}
    (row,) = await buffers(database_url)
    assert row["sending_since"] is not None
    assert (row["due_at"] - row["sending_since"]).total_seconds() >= 119  # SEND_GRACE_SECONDS, not the 0.1 s backoff
    (reply,) = far_side.public_replies()
    echo = chatwoot_fixture("message_created_outgoing_agent_bot")
    echo.update(id=4242, content=reply["body"]["content"], content_attributes=reply["body"]["content_attributes"])
    assert (await bot.post(echo)).json() == {"status": "echo recorded"}
    await make_due(database_url)
    assert await bot.sweep() == {"completed": 1}
    assert len(far_side.public_replies()) == 1
    (row,) = await buffers(database_url)
    assert (row["status"], row["platform_message_id"], row["model_calls"]) == ("completed", "4242", 1)


async def test_a_rate_limit_that_lasts_past_the_first_hour_counts_and_ends_failed(
        bot: Bot, far_side: FarSide, database_url: str) -> None:
    from tests.support.sql import execute

    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    await execute(database_url, "update public.message_buffer set first_message_at = now() - interval '2 hours'")
    far_side.throttle_replies = 10
    outcomes = []
    for _ in range(3):  # MAX_ATTEMPTS in the tests
        await make_due(database_url)
        outcomes.append(await bot.sweep())
    (row,) = await buffers(database_url)
    assert row["status"] == "failed" and "rate limited" in row["last_error"], outcomes
    assert outcomes[-1] == {"failed": 1}  # visible: the failed-bursts alarm and the inspector see it
