"""Where a waiting buffer is claimed: sweep passes that claim what is due and process it.

One Sweeper serves every host: `chatbuffer sweep --once` and the fallback run one pass; the Lambda
sweeper runs passes for ~62 s per EventBridge tick (each minute overlaps the next); `chatbuffer serve` runs them forever. Between
passes it sleeps only until the earliest due buffer (at most SWEEP_INTERVAL_SECONDS), and a local
ingest can wake it early. Racing sweepers are safe: the claim is atomic in SQL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Sequence

from shared.db.errors import StoreError
from shared.db.store import BufferStore
from shared.metrics import Metrics
from shared.models import ClaimedBuffer, RuntimeConfig
from shared.processing import BufferProcessor

log = logging.getLogger(__name__)

PURGE_EVERY_SECONDS = 60
METRICS_EVERY_SECONDS = 60  # a long-running loop writes its metrics once a minute


class Sweeper:
    def __init__(
        self, store: BufferStore, processor: BufferProcessor, *,
        concurrency: int, lease_seconds: float, max_attempts: int,
        retention_seconds: float, purge_batch_size: int, metrics: Metrics | None = None,
        send_grace_seconds: float = 0,
    ) -> None:
        self._store = store
        self._processor = processor
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._retention_seconds = retention_seconds
        self._purge_batch_size = purge_batch_size
        self._next_purge = 0.0
        self._send_grace_seconds = send_grace_seconds
        self._metrics = metrics or Metrics(enabled=False)
        self._next_metrics = time.monotonic() + METRICS_EVERY_SECONDS
        self._tasks: set[asyncio.Task[str]] = set()
        self._wake: asyncio.Event | None = None
        self._sleeping_until = float("inf")
        self._stopping = False
        self.outcomes: Counter[str] = Counter()

    def wake(self) -> None:
        """Ask a sleeping sweep loop to look again now."""
        if self._wake is not None:
            self._wake.set()

    def note_due(self, seconds: float) -> None:
        """A buffer becomes due in `seconds`: wake earlier than planned if that is sooner."""
        if time.monotonic() + seconds < self._sleeping_until:
            self.wake()

    def stop(self) -> None:
        """End a running loop after its current pass; work in flight still finishes."""
        self._stopping = True
        self.wake()

    async def run_once(self, prefer_ids: Sequence[int] = (), limit: int | None = None) -> Counter[str]:
        """One pass: claim what is due (at most `limit`), process it all, return the outcomes.

        A conversation's next burst becomes claimable when its previous one finishes, so the pass
        claims again whenever a buffer finishes, until nothing more is due.
        """
        config = await self._prepare()
        budget = float("inf") if limit is None else limit
        while True:
            budget -= await self._fill_slots(config, prefer_ids, budget)
            if not self._tasks or budget <= 0:
                break
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
        await self._drain()
        self._metrics.flush(Function="sweeper")
        return self.outcomes

    async def run_until(self, deadline: float) -> Counter[str]:
        """Sweep until the monotonic `deadline`, then let work in flight finish."""
        self._wake = asyncio.Event()
        try:
            while not self._stopping and time.monotonic() < deadline:
                try:
                    config = await self._prepare()  # flags and settings re-read every pass
                    await self._fill_slots(config)
                    pause = await self._pause(config, slots_full=len(self._tasks) >= self._concurrency)
                except StoreError:
                    log.exception("sweep pass failed; trying again shortly")
                    pause = 1.0
                self._flush_metrics_now_and_then()
                await self._sleep(min(pause, deadline - time.monotonic()))
        finally:
            await self._drain()
            self._metrics.flush(Function="sweeper")
        return self.outcomes

    def _flush_metrics_now_and_then(self) -> None:
        if time.monotonic() >= self._next_metrics:
            self._next_metrics = time.monotonic() + METRICS_EVERY_SECONDS
            self._metrics.flush(Function="sweeper")

    async def _prepare(self) -> RuntimeConfig:
        config = await self._store.runtime_config()
        if config.settings_error:
            log.error("%s", config.settings_error)
        for buffer_id, status in await self._store.reclaim_expired_leases(self._max_attempts, self._send_grace_seconds):
            log.warning("buffer %s: lease expired, now %s", buffer_id, status)
        await self._purge_now_and_then()
        return config

    async def _purge_now_and_then(self) -> None:
        """Retention: one small batch of old finished bursts, at most once a minute per sweeper."""
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_EVERY_SECONDS
        purged = await self._store.purge_finished_buffers(self._retention_seconds, self._purge_batch_size)
        if purged:
            log.info("retention: purged %d finished buffer(s)", purged)

    async def _fill_slots(
        self, config: RuntimeConfig, prefer_ids: Sequence[int] = (), budget: float = float("inf")
    ) -> int:
        """Claim due buffers into the free slots (at most `budget`); returns how many it claimed."""
        total = 0
        while (free := int(min(self._concurrency - len(self._tasks), budget - total))) > 0:
            claimed = await self._store.claim_due_buffers(free, self._lease_seconds, prefer_ids)
            for buffer in claimed:
                self._start(buffer, config)
            total += len(claimed)
            if len(claimed) < free:
                break
        return total

    def _start(self, buffer: ClaimedBuffer, config: RuntimeConfig) -> None:
        task = asyncio.create_task(self._processor.process(buffer, config), name=f"buffer-{buffer.buffer_id}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[str]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        outcome = "crashed" if task.exception() else task.result()
        if task.exception():
            log.error("processing crashed: %r", task.exception())
        self.outcomes[outcome] += 1
        if self._wake is not None:
            self._wake.set()  # a slot is free: a backlog can move on

    async def _pause(self, config: RuntimeConfig, slots_full: bool) -> float:
        """Until the earliest due burst, and never longer than the quiet window: a burst that opens
        while we sleep is due a whole window after its first message at the earliest, so we are
        awake before it is due. That matters where no webhook can wake us (the Lambda sweeper)."""
        if slots_full:
            return config.sweep_interval_seconds  # woken as soon as a slot frees
        longest = min(config.sweep_interval_seconds, config.window_seconds)
        seconds = await self._store.seconds_until_next_due()
        return longest if seconds is None else min(seconds, longest)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        if seconds > 0 and not self._wake.is_set():
            self._sleeping_until = time.monotonic() + seconds
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=seconds)
            except TimeoutError:
                pass
            finally:
                self._sleeping_until = float("inf")
        self._wake.clear()

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.wait(set(self._tasks))
