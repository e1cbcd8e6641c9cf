"""Reply lateness: reply sent minus the end of the buffer's quiet window (its due_at).

The same seeded traffic (bursts of 1-3 messages, 0.2-0.6 s apart, a 1 s window) is replayed
against three ways of running the sweeper:
  serve     `chatbuffer serve`: webhooks over HTTP, the in-process loop sleeps until the earliest
            due buffer and a webhook wakes it when a sooner one appears;
  lambda    functions/sweeper.handler invoked as EventBridge does: every tick (60 s) an invocation
            in a container of its own sweeps for SWEEP_LOOP_SECONDS (62 s, so each overlaps the
            next), waking at the earliest due buffer;
  fixed     the plain fixed-tick design: one sweep pass every 10 s.
The far side answers instantly, so what is measured is the buffer's own lateness, not the
model's. Clocks: due_at is the database's, the reply time the far side's, both on this host.
Smoke mode shrinks the minute to 1.2 s (loop 1.4 s) and the fixed tick to 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from typing import Any

import asyncpg
import httpx

from bench.common import ROOT, database_factory, median, percentile, uvicorn_server
from tests.support.processes import chatbuffer_serve
from shared.channels.chatwoot import sign

SECRET = "bench-webhook-secret"
WINDOW = 1.0

FIXED_TICK = """
import asyncio, sys, time
from shared.config import Settings
from shared.runtime import Runtime
async def main(tick, until):
    runtime = Runtime(Settings.from_env())
    while time.time() < until:
        started = time.monotonic()
        await runtime.new_sweeper().run_once()
        await asyncio.sleep(max(0, tick - (time.monotonic() - started)))
    await runtime.close()
asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""

# EventBridge fires every tick whether or not the last invocation has ended; an invocation that
# starts while another still runs gets a container of its own: here, a process of its own.
EVENTBRIDGE = """
import subprocess, sys, time
INVOCATION = (
    "import functions.sweeper as sweeper\\n"
    "from tests.support.aws_events import LambdaContext, scheduled_event\\n"
    "sweeper.handler(scheduled_event(), LambdaContext(210))\\n")
tick, until = float(sys.argv[1]), float(sys.argv[2])
running = []
while time.time() < until:
    started = time.monotonic()
    running.append(subprocess.Popen([sys.executable, "-c", INVOCATION]))
    time.sleep(max(0, tick - (time.monotonic() - started)))
for invocation in running:
    invocation.wait()
"""


def traffic(seconds: float, seed: int = 7) -> list[tuple[float, int, int]]:
    """(send offset, conversation, message number): bursts start as a Poisson process."""
    rng = random.Random(seed)
    events, t, conversation = [], 0.0, 0
    while t < seconds:
        conversation += 1
        offset = t
        for n in range(rng.choice([1, 1, 2, 3])):
            events.append((offset, conversation, n))
            offset += rng.uniform(0.2, 0.6)
        t += rng.expovariate(4.0)  # about four new bursts a second
    return sorted(events)


def payload(conversation: int, n: int) -> bytes:
    from tests.conftest import incoming

    return json.dumps(incoming(conversation * 100 + n, f"m{n}", conversation_id=conversation)).encode()


async def replay_http(url: str, events: list[tuple[float, int, int]]) -> None:
    async with httpx.AsyncClient() as client:
        start = time.monotonic()
        for offset, conversation, n in events:
            await asyncio.sleep(max(0, start + offset - time.monotonic()))
            body = payload(conversation, n)
            ts = str(int(time.time()))
            headers = {"content-type": "application/json", "x-chatwoot-timestamp": ts,
                       "x-chatwoot-signature": sign(SECRET, ts, body)}
            (await client.post(f"{url}/webhooks/chatwoot", content=body, headers=headers)).raise_for_status()


async def replay_store(dsn: str, events: list[tuple[float, int, int]]) -> None:
    from shared.channels.chatwoot import parse_event
    from shared.config import BufferTiming
    from shared.db.postgres import PostgresConnector
    from shared.db.store import BufferStore

    store = BufferStore(PostgresConnector(dsn), BufferTiming(buffer_window_seconds=WINDOW, buffer_max_age_seconds=10))
    start = time.monotonic()
    for offset, conversation, n in events:
        await asyncio.sleep(max(0, start + offset - time.monotonic()))
        message = parse_event(payload(conversation, n), frozenset({"pending"}))
        await store.ingest(message)  # type: ignore[arg-type]
    await store.close()


async def lateness(dsn: str, far_url: str) -> list[float]:
    replies = httpx.get(f"{far_url}/_stats", params={"times": "1", "ids": "1"}).json()
    conn = await asyncpg.connect(dsn)
    try:
        due = {r["id"]: r["due"] for r in await conn.fetch(
            "select id, extract(epoch from due_at)::float as due from public.message_buffer")}
    finally:
        await conn.close()
    return [at - due[buffer_id] for buffer_id, at in zip(replies["reply_buffer_ids"], replies["reply_times"])]


async def measure(factory: Any, mode: str, events: list[tuple[float, int, int]], seconds: float,
                  tick: float, loop_seconds: float) -> list[float]:
    dsn = await factory.fresh()
    env = {"DATABASE_URL": dsn, "CHATWOOT_WEBHOOK_SECRET": SECRET, "OPENAI_API_KEY": "bench",
           "CHATWOOT_API_TOKEN": "bench", "BUFFER_WINDOW_SECONDS": str(WINDOW), "BUFFER_MAX_AGE_SECONDS": "10",
           "SWEEP_INTERVAL_SECONDS": "10", "LOG_LEVEL": "WARNING"}
    if loop_seconds:
        env["SWEEP_LOOP_SECONDS"] = str(loop_seconds)
    try:
        with uvicorn_server("tests.support.far_side:app_from_env", {}, factory=True) as far_url:
            env |= {"OPENAI_BASE_URL": f"{far_url}/v1", "CHATWOOT_BASE_URL": far_url}
            drain = seconds + tick + WINDOW + 1
            if mode == "serve":
                await serve_and_replay(env, events, drain)
            else:
                code = EVENTBRIDGE if mode == "lambda" else FIXED_TICK
                until = time.time() + drain
                process = subprocess.Popen([sys.executable, "-c", code, str(tick), str(until)], cwd=ROOT,
                                           env={**os.environ, **env})
                await replay_store(dsn, events)
                await asyncio.to_thread(process.wait)
            return await lateness(dsn, far_url)
    finally:
        await factory.drop(dsn)


async def serve_and_replay(env: dict[str, str], events: list[tuple[float, int, int]], drain: float) -> None:
    with chatbuffer_serve({**os.environ, **env}, output=[]) as url:
        started = time.monotonic()
        await replay_http(url, events)
        await asyncio.sleep(max(0, drain - (time.monotonic() - started)))


async def run_async(smoke: bool) -> dict[str, Any]:
    seconds = 2 if smoke else 180
    modes = {"serve": (0, 0), "lambda": (1.2, 1.4) if smoke else (60, 62), "fixed": (0.5, 0) if smoke else (10, 0)}
    events = traffic(seconds)
    results = {}
    async with database_factory() as factory:
        for mode, (tick, loop_seconds) in modes.items():
            values = await measure(factory, mode, events, seconds, tick, loop_seconds)
            results[mode] = {"replies": len(values), "p50_s": median(values), "p95_s": percentile(values, 0.95),
                             "p99_s": percentile(values, 0.99), "max_s": max(values) if values else float("nan")}
    summary = [f"reply lateness after the quiet window, {len(events)} messages over {seconds} s:"]
    for mode, r in results.items():
        summary.append(f"  {mode:7s} replies {r['replies']:4d}  p50 {r['p50_s']:6.3f} s  p95 {r['p95_s']:6.3f} s"
                       f"  p99 {r['p99_s']:6.3f} s  max {r['max_s']:6.3f} s"
                       + {"serve": "   (target p95 <= 0.25 s)", "lambda": "   (target p95 <= 0.5 s)"}.get(mode, ""))
    return {"name": "lateness", "results": results, "summary": summary}


def run(smoke: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(smoke))
