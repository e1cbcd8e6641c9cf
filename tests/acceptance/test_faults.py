"""What already holds under faults, kept true by tests of real processes: the database stopped
under steady traffic (the webhook answers 500 at once, which Chatwoot retries, and recovers with no
restart), and a sweeper killed with SIGKILL mid-burst (its burst is reclaimed after the lease and
answered once)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from shared.config import Settings
from shared.migrate import migrate
from shared.models import InboundMessage
from shared.runtime import Runtime
from tests.conftest import WEBHOOK_SECRET, chatwoot_fixture, incoming, signed_headers
from tests.support.far_side import FarSide
from tests.support.managed_postgres import managed_postgres
from tests.support.processes import ROOT, chatbuffer_serve
from tests.support.sql import buffers, fetch, make_due
from tests.support.webhook import Bot


def post(url: str, payload: dict[str, Any]) -> tuple[int, float]:
    body = json.dumps(payload).encode()
    started = time.monotonic()
    try:
        status = httpx.post(f"{url}/webhooks/chatwoot", content=body, headers=signed_headers(body), timeout=10).status_code
    except httpx.TimeoutException:
        status = 0  # a timeout: Chatwoot would hand the customer to a human
    return status, time.monotonic() - started


def wait_for_all_answered(dsn: str, timeout: float = 40) -> None:
    """The windows end and the in-process sweeper answers every burst (a burst caught in flight by
    the outage waits out its lease, and its send grace if its post may have arrived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = asyncio.run(fetch(dsn, "select count(*) as n from public.message_buffer where status <> 'completed'"))
        if waiting[0]["n"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"bursts still unanswered after {timeout} s")


def test_the_webhook_answers_500_while_the_database_is_down_and_recovers_by_itself(far_side: FarSide) -> None:
    with managed_postgres() as pg:
        asyncio.run(migrate(pg.dsn))
        # Short leases and grace: a burst caught in flight by the outage is taken over within the test.
        env = {**os.environ, "DATABASE_URL": pg.dsn, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": f"{far_side.url}/v1",
               "CHATWOOT_BASE_URL": far_side.url, "CHATWOOT_API_TOKEN": "t", "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "BUFFER_WINDOW_SECONDS": "0.5", "BUFFER_MAX_AGE_SECONDS": "10", "SWEEP_INTERVAL_SECONDS": "1",
               "LEASE_SECONDS": "4", "OPENAI_TIMEOUT_SECONDS": "3", "SEND_GRACE_SECONDS": "3"}
        sent: list[tuple[int, float, int, float]] = []  # message id, when, status, seconds to answer
        with chatbuffer_serve(env, output=[]) as url:
            far_side.echo_to, far_side.echo_secret = f"{url}/webhooks/chatwoot", WEBHOOK_SECRET
            started = time.monotonic()

            def traffic() -> None:  # a message every 100 ms over 5 conversations, for 7 s
                n = 0
                while time.monotonic() - started < 7:
                    n += 1
                    status, took = post(url, incoming(70_000 + n, f"mensaje {n}", conversation_id=600 + n % 5))
                    sent.append((70_000 + n, time.monotonic() - started, status, took))
                    time.sleep(0.1)

            sender = threading.Thread(target=traffic)
            sender.start()
            time.sleep(2)
            pg.stop()
            time.sleep(3)
            pg.start()
            sender.join()
            # Chatwoot redelivers what got a 500: now all of it is stored.
            refused = [m for m in sent if m[2] == 500]
            for message_id, *_ in refused:
                assert post(url, incoming(message_id, "redelivered", conversation_id=600 + (message_id - 70_000) % 5))[0] == 200
            wait_for_all_answered(pg.dsn)

        statuses = {status for _, _, status, _ in sent}
        assert statuses <= {200, 500}, statuses  # never a timeout or a 502/503/504
        assert len(refused) >= 5, sent  # the database was down for 3 s of 10 messages a second
        assert max(took for *_, status, took in sent if status == 500) < 2  # at once, well within Chatwoot's 5 s
        assert [s for _, at, s, _ in sent if at > 6.5] and all(s == 200 for _, at, s, _ in sent if at > 6.5)
        stored = asyncio.run(fetch(pg.dsn, "select external_id from public.buffered_messages"))
        assert sorted(int(r["external_id"]) for r in stored) == sorted(m[0] for m in sent)  # nothing lost
        rows = asyncio.run(buffers(pg.dsn))
        assert all(r["status"] == "completed" for r in rows), [(r["id"], r["status"], r["last_error"]) for r in rows if r["status"] != "completed"]
        assert len(far_side.public_replies()) == len(rows)  # one reply per burst, none twice


async def test_a_sweeper_killed_mid_burst_is_reclaimed_after_its_lease_and_answered_once(
        database_url: str, far_side: FarSide, settings: Settings) -> None:
    runtime = Runtime(settings)
    await runtime.store.ingest(InboundMessage("chatwoot", "3", "431", "m1", "Hola"))
    await runtime.close()
    await make_due(database_url)
    env = {**os.environ, "DATABASE_URL": database_url, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": f"{far_side.url}/v1",
           "CHATWOOT_BASE_URL": far_side.url, "CHATWOOT_API_TOKEN": "t", "LEASE_SECONDS": "4",
           "OPENAI_TIMEOUT_SECONDS": "3.5"}
    far_side.openai_latency = 3  # the model is slow: the sweeper is inside the call when it dies
    sweeper = subprocess.Popen([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # claimed: under its lease
        (row,) = await buffers(database_url)
        if row["lease_token"] is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)  # into the 3 s model call
    assert (await buffers(database_url))[0]["status"] == "processing" and not far_side.replies
    sweeper.send_signal(signal.SIGKILL)
    sweeper.wait(timeout=10)
    assert sweeper.returncode == -signal.SIGKILL

    far_side.openai_latency = 0
    await asyncio.sleep(4.2)  # the lease runs out
    again = subprocess.run([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r["body"]["content"] for r in far_side.public_replies()] == ["echo: Hola"]
    (row,) = await buffers(database_url)
    assert (row["status"], row["attempts"]) == ("completed", 2)
    assert "lease expired" in json.dumps(row["attempt_errors"])


def sweeper_env(database_url: str, far_side: FarSide, *, send_grace_seconds: float) -> dict[str, str]:
    """`chatbuffer sweep --once` against the fake far side, with a 3 s lease."""
    return {**os.environ, "DATABASE_URL": database_url, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": f"{far_side.url}/v1",
            "CHATWOOT_BASE_URL": far_side.url, "CHATWOOT_API_TOKEN": "t", "LEASE_SECONDS": "3",
            "OPENAI_TIMEOUT_SECONDS": "2", "SEND_GRACE_SECONDS": str(send_grace_seconds)}


async def sweep_in_a_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


async def test_a_sweeper_killed_between_post_and_completion_never_posts_twice(
        bot: Bot, database_url: str, far_side: FarSide) -> None:
    """The reply reached Chatwoot, then its sweeper died. Chatwoot's echo of the reply says it left:
    the burst is completed from the draft stored before the post, without posting or calling the
    model again, and keeps Chatwoot's message id."""
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    await make_due(database_url)
    env = sweeper_env(database_url, far_side, send_grace_seconds=600)
    sweeper = await sweep_in_a_process(env)
    far_side.kill_on_reply = sweeper.pid
    await asyncio.to_thread(sweeper.wait, 30)
    assert sweeper.returncode == -signal.SIGKILL
    (reply,) = far_side.public_replies()
    (row,) = await buffers(database_url)
    assert row["status"] == "processing" and row["sending_since"] is not None and row["reply_content"] == "echo: Hola"

    # Chatwoot echoes the reply it received, with our marker: that completes the story.
    echo = chatwoot_fixture("message_created_outgoing_agent_bot")
    echo.update(id=reply_id(far_side), content=reply["body"]["content"],
                content_attributes=reply["body"]["content_attributes"])
    assert (await bot.post(echo)).json() == {"status": "echo recorded"}
    await asyncio.sleep(3.2)  # the dead sweeper's lease runs out
    again = subprocess.run([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "completed" in again.stdout, again.stdout + again.stderr
    assert len(far_side.public_replies()) == 1 and len(far_side.completions) == 1
    (row,) = await buffers(database_url)
    assert (row["status"], row["outcome"], row["platform_message_id"]) == ("completed", "replied", str(reply_id(far_side)))


async def test_without_an_echo_the_reply_is_posted_again_only_after_the_grace(
        bot: Bot, database_url: str, far_side: FarSide) -> None:
    """No echo came (the post may never have reached Chatwoot): the reclaim waits SEND_GRACE_SECONDS
    from the post, then posts the stored draft again, without another model call."""
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    await make_due(database_url)
    env = sweeper_env(database_url, far_side, send_grace_seconds=15)
    sweeper = await sweep_in_a_process(env)
    far_side.kill_on_reply = sweeper.pid
    await asyncio.to_thread(sweeper.wait, 30)
    posted_at = time.monotonic()
    await asyncio.sleep(3.2)  # the lease runs out, the grace does not
    early = subprocess.run([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "nothing due" in early.stdout and len(far_side.public_replies()) == 1
    await asyncio.sleep(max(0, 15.3 - (time.monotonic() - posted_at)))
    late = subprocess.run([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert "completed" in late.stdout, late.stdout + late.stderr
    assert len(far_side.public_replies()) == 2 and len(far_side.completions) == 1  # the draft, not a new call


def reply_id(far_side: FarSide) -> int:
    return 900_000 + len(far_side.replies)
