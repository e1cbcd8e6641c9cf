"""Drain: how fast due buffers are claimed and answered, against the bound set by latency.

N buffers are made due at once (bulk SQL); `chatbuffer sweep --once` processes run against them,
one alone and then three racing, each a separate process as separate Lambda invocations are.
The rate is measured from the first completion to the last (plus one buffer's latency), so the
processes' start-up (importing the OpenAI SDK) does not count; the wall rate is shown beside it.
OpenAI and Chatwoot are a fake far side in its own process answering after 200 ms and 50 ms, so
one buffer needs at least 250 ms (typing indicators off: they would add two more calls). The
bound is total concurrency / 250 ms; the result must not answer any buffer twice.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import asyncpg
import httpx

from bench.common import ROOT, database_factory, uvicorn_server

OPENAI_LATENCY, CHATWOOT_LATENCY = 0.200, 0.050

FILL = """
with buffers as (
    insert into public.message_buffer (channel, account_id, conversation_id, message_count, due_at)
    select 'chatwoot', '3', 'drain-' || g, 2, now() - interval '1 second' from generate_series(1, $1) g
    returning id
)
insert into public.buffered_messages (buffer_id, channel, account_id, external_id, content, sent_at)
select b.id, 'chatwoot', '3', 'drain-' || b.id || '-' || n, 'mensaje ' || n, now()
  from buffers b, generate_series(1, 2) n
"""


async def prepare(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("update public.feature_flags set is_enabled = false where flag_name = 'typing_indicators'")
        await conn.execute(FILL, count)
    finally:
        await conn.close()


async def check(dsn: str, count: int, far_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "select count(*) filter (where status = 'completed') as completed, max(attempts) as max_attempts,"
            " extract(epoch from max(completed_at) - min(completed_at))::float as span from public.message_buffer")
    finally:
        await conn.close()
    stats = httpx.get(f"{far_url}/_stats").json()
    return {"completed": row["completed"], "expected": count, "max_attempts": row["max_attempts"],
            # Processing time without process start-up: first to last completion, plus one buffer.
            "processing_seconds": row["span"] + OPENAI_LATENCY + CHATWOOT_LATENCY,
            "replies": stats["replies"], "duplicates": len(stats["duplicate_buffer_ids"])}


def sweep_processes(dsn: str, far_url: str, sweepers: int, concurrency: int) -> float:
    env = {**os.environ, "DATABASE_URL": dsn, "OPENAI_API_KEY": "bench", "OPENAI_BASE_URL": f"{far_url}/v1",
           "CHATWOOT_BASE_URL": far_url, "CHATWOOT_API_TOKEN": "bench", "SWEEP_CONCURRENCY": str(concurrency),
           "DATABASE_POOL_SIZE": str(min(concurrency, 20)), "LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "shared.cli", "sweep", "--once"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(sweepers)]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(err)
    return time.perf_counter() - started


async def measure(factory: Any, count: int, sweepers: int, concurrency: int) -> dict[str, Any]:
    dsn = await factory.fresh()
    far_env = {"FAR_OPENAI_LATENCY": str(OPENAI_LATENCY), "FAR_CHATWOOT_LATENCY": str(CHATWOOT_LATENCY)}
    try:
        await prepare(dsn, count)
        with uvicorn_server("tests.support.far_side:app_from_env", far_env, factory=True) as far_url:
            seconds = await asyncio.to_thread(sweep_processes, dsn, far_url, sweepers, concurrency)
            outcome = await check(dsn, count, far_url)
    finally:
        await factory.drop(dsn)
    rate = count / outcome["processing_seconds"]
    bound = sweepers * concurrency / (OPENAI_LATENCY + CHATWOOT_LATENCY)
    return {"sweepers": sweepers, "concurrency": concurrency, "buffers": count, "seconds": seconds,
            "buffers_per_s": rate, "bound_per_s": bound, "ratio": rate / bound, **outcome}


async def run_async(smoke: bool) -> dict[str, Any]:
    # One sweeper with 32 slots, then three racing with 11 each: about the same total
    # concurrency, so the second run shows what racing costs, not what a 2-core machine cannot do.
    count, single, racing = (60, 8, 3) if smoke else (5_000, 32, 11)
    async with database_factory() as factory:
        runs = [await measure(factory, count, 1, single), await measure(factory, count, 3, racing)]
    summary = [f"drain {count} due buffers, far side 200 ms model + 50 ms reply (bound = concurrency / 250 ms):"]
    for r in runs:
        summary.append(
            f"  {r['sweepers']} sweeper(s) x {r['concurrency']} slots: {r['buffers_per_s']:6.1f} buffers/s "
            f"({r['buffers'] / r['seconds']:.1f} counting process start), "
            f"bound {r['bound_per_s']:6.1f}, ratio {r['ratio']:.2f} (target >= 0.7); completed "
            f"{r['completed']}/{r['expected']}, replies {r['replies']}, answered twice {r['duplicates']}, "
            f"max attempts {r['max_attempts']}")
    return {"name": "drain", "runs": runs, "summary": summary}


def run(smoke: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(smoke))
