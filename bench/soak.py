"""Soak: steady traffic through `chatbuffer serve` for 10 minutes with its sweeper running.

The same seeded traffic as the lateness benchmark (about four new bursts a second, 1-3 messages
each, 0.2-0.6 s apart, a 1 s window), signed webhooks over HTTP, a far side answering at once.
Checked at the end: every message stored, every burst answered exactly once, none failed. The
server's resident memory is sampled every 10 s: start (after the first minute's warm-up) and end
are reported, and whether it stayed flat. Smoke mode: 6 s, samples every second.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
import psutil

from bench.common import database_factory, uvicorn_server
from bench.lateness import SECRET, replay_http, traffic
from tests.support.processes import chatbuffer_serve
from tests.support.sql import fetch


def server_process(url: str) -> psutil.Process:
    """The `chatbuffer serve` listening on this URL's port."""
    port = url.rsplit(":", 1)[-1]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and port in cmdline:
            return process
    raise RuntimeError(f"no chatbuffer serve process on port {port}")


async def sample_rss(process: psutil.Process, every: float, until: float, samples: list[tuple[float, int]]) -> None:
    started = time.monotonic()
    while time.monotonic() < until:
        samples.append((time.monotonic() - started, process.memory_info().rss))
        await asyncio.sleep(every)


async def drained(dsn: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await fetch(dsn, "select count(*) as n from public.message_buffer where status in ('active', 'processing')")
        if rows[0]["n"] == 0:
            return
        await asyncio.sleep(0.5)


async def run_async(smoke: bool) -> dict[str, Any]:
    seconds, every, warmup = (6, 1.0, 1.0) if smoke else (600, 10.0, 60.0)
    events = traffic(seconds, seed=11)
    async with database_factory() as factory:
        dsn = await factory.fresh()
        try:
            with uvicorn_server("tests.support.far_side:app_from_env", {}, factory=True) as far_url:
                env = {**os.environ, "DATABASE_URL": dsn, "CHATWOOT_WEBHOOK_SECRET": SECRET, "OPENAI_API_KEY": "bench",
                       "OPENAI_BASE_URL": f"{far_url}/v1", "CHATWOOT_BASE_URL": far_url, "CHATWOOT_API_TOKEN": "bench",
                       "BUFFER_WINDOW_SECONDS": "1", "BUFFER_MAX_AGE_SECONDS": "10", "SWEEP_INTERVAL_SECONDS": "1",
                       "LOG_LEVEL": "WARNING"}
                with chatbuffer_serve(env, output=[], timeout=60) as url:
                    process = server_process(url)
                    samples: list[tuple[float, int]] = []
                    sampler = asyncio.create_task(sample_rss(process, every, time.monotonic() + seconds, samples))
                    await replay_http(url, events)
                    await sampler
                    await drained(dsn, timeout=30)
                    stats = httpx.get(f"{far_url}/_stats").json()
            counts = (await fetch(dsn, "select (select count(*) from public.buffered_messages) as messages,"
                                       " count(*) as bursts, count(*) filter (where status = 'completed') as completed,"
                                       " count(*) filter (where status = 'failed') as failed"
                                       " from public.message_buffer"))[0]
        finally:
            await factory.drop(dsn)
    settled = [rss for at, rss in samples if at >= warmup] or [rss for _, rss in samples]
    start_mb, end_mb, peak_mb = settled[0] / 2**20, settled[-1] / 2**20, max(settled) / 2**20
    growth = end_mb / start_mb - 1
    result = {
        "name": "soak", "seconds": seconds, "messages_sent": len(events), "messages_stored": counts["messages"],
        "bursts": counts["bursts"], "completed": counts["completed"], "failed": counts["failed"],
        "replies": stats["replies"], "answered_twice": stats["duplicate_buffer_ids"],
        "rss_mb": {"start": round(start_mb, 1), "end": round(end_mb, 1), "peak": round(peak_mb, 1)},
        "rss_growth": round(growth, 3), "rss_samples_mb": [round(rss / 2**20, 1) for _, rss in samples],
    }
    result["summary"] = [
        f"soak, {len(events)} messages over {seconds} s through chatbuffer serve (sweeper in process):",
        f"  stored {counts['messages']} of {len(events)}; {counts['bursts']} bursts, {counts['completed']} answered,"
        f" {counts['failed']} failed; {stats['replies']} replies, answered twice: {len(stats['duplicate_buffer_ids'])}",
        f"  server RSS after warm-up {start_mb:.1f} MB, at the end {end_mb:.1f} MB ({growth:+.1%}), peak {peak_mb:.1f} MB",
    ]
    return result


def run(smoke: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(smoke))
