"""Claim cost vs history: does the claim stay fast as completed buffers pile up? And what do the
operator's reads (the admin API's stats, its first page of bursts) cost over the same history?

For each history size, a fresh database gets that many completed buffers (one message each, spread
over 50,000 conversations), written in bulk by SQL. Then, repeatedly: 20 new conversations get a
due buffer each, and one `claim_due_buffers(20)` call is timed from the client (round trip
included). The claim reads only the partial index of unfinished buffers, so history should not
matter; the median at each size is compared with the empty database's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench.common import database_factory, median, percentile
from shared.config import BufferTiming
from shared.db.admin import AdminStore
from shared.db.postgres import PostgresConnector
from shared.db.store import BufferStore
from shared.models import InboundMessage

FILL = """
insert into public.message_buffer (channel, account_id, conversation_id, status, message_count,
                                   first_message_at, last_message_at, due_at, attempts,
                                   reply_content, created_at, completed_at)
select 'chatwoot', '3', (g % 50000)::text, 'completed', 1, t, t, t, 1, 'reply ' || g, t, t + interval '31 seconds'
  from generate_series(1, $1) g, lateral (select now() - interval '1 day' + g * (interval '1 day' / $1) as t) x;
insert into public.buffered_messages (buffer_id, channel, account_id, external_id, content, sent_at)
select b.id, 'chatwoot', '3', 'hist-' || b.id, 'message ' || b.id, b.first_message_at
  from public.message_buffer b;
"""


async def fill(dsn: str, completed: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if completed:
            statements = FILL.strip().split(";\n")
            await conn.execute(statements[0], completed)
            await conn.execute(statements[1])
        await conn.execute("vacuum analyze")
    finally:
        await conn.close()


async def time_claims(dsn: str, iterations: int) -> list[float]:
    store = BufferStore(PostgresConnector(dsn), BufferTiming())
    conn = await asyncpg.connect(dsn)
    timings = []
    try:
        for i in range(iterations):
            for c in range(20):
                await store.ingest(InboundMessage("chatwoot", "3", f"new-{i}-{c}", f"new-{i}-{c}", "hola"))
            await conn.execute("update public.message_buffer set due_at = now() - interval '1 second'"
                               " where status = 'active'")
            started = time.perf_counter()
            claimed = await store.claim_due_buffers(20, 60)
            timings.append(time.perf_counter() - started)
            assert len(claimed) == 20, len(claimed)
            for buffer in claimed:
                await store.complete_buffer(buffer, "ok")
    finally:
        await conn.close()
        await store.close()
    return timings


async def time_admin_reads(dsn: str, iterations: int) -> dict[str, list[float]]:
    """What the inspector asks every few seconds: the stats, and the newest page of bursts."""
    admin = AdminStore(PostgresConnector(dsn), BufferTiming())
    reads = {"stats": admin.stats, "list": lambda: admin.list_bursts(limit=51)}
    timings: dict[str, list[float]] = {name: [] for name in reads}
    try:
        for _ in range(iterations):
            for name, read in reads.items():
                started = time.perf_counter()
                await read()
                timings[name].append(time.perf_counter() - started)
    finally:
        await admin._connector.close()
    return timings


async def run_async(smoke: bool) -> dict[str, Any]:
    sizes = [0, 1_000, 10_000] if smoke else [0, 100_000, 1_000_000]
    iterations = 10 if smoke else 100
    results = {}
    async with database_factory() as factory:
        for size in sizes:
            dsn = await factory.fresh()
            try:
                await fill(dsn, size)
                timings = await time_claims(dsn, iterations)
                admin_reads = await time_admin_reads(dsn, 3 if smoke else 10)
            finally:
                await factory.drop(dsn)
            results[size] = {"p50_ms": median(timings) * 1000, "p95_ms": percentile(timings, 0.95) * 1000,
                             **{f"admin_{name}_p50_ms": median(t) * 1000 for name, t in admin_reads.items()}}
    base = results[sizes[0]]["p50_ms"]
    summary = [f"claim_due_buffers(20) latency vs completed buffers in the tables ({iterations} claims each):"]
    for size in sizes:
        r = results[size]
        summary.append(f"  {size:>9,} completed   p50 {r['p50_ms']:6.2f} ms   p95 {r['p95_ms']:6.2f} ms"
                       f"   ratio {r['p50_ms'] / base:.2f} (target <= 1.5)")
    summary.append("admin API reads over the same history (medians; spread evenly over the last 24 h):")
    for size in sizes:
        r = results[size]
        summary.append(f"  {size:>9,} completed   stats {r['admin_stats_p50_ms']:8.1f} ms"
                       f"   first page of bursts {r['admin_list_p50_ms']:6.1f} ms")
    return {"name": "claim", "results": results, "summary": summary}


def run(smoke: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(smoke))
