"""Lambda entry point for the sweeper: EventBridge `rate(1 minute)`, or a fallback flush.

A scheduled tick sweeps for SWEEP_LOOP_SECONDS (62 s: EventBridge fires every minute, and each
invocation overlaps the next by 2 s, so a sweeper is always awake), stopping early enough that
work in flight finishes inside the function's timeout. A flush event (sent by the
webhook when there is no scheduler) runs one pass for the buffers it names and a few others.
Two overlapping invocations are safe: the claim is atomic in the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from shared.config import Settings
from shared.dispatch import FLUSH_EVENT_SOURCE
from shared.logs import configure_logging
from shared.runtime import Runtime

configure_logging()
log = logging.getLogger(__name__)

# Per container: the loop and the runtime (with its database pool) outlive one invocation.
_runner = asyncio.Runner()
_runtime: Runtime | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _runtime
    _runtime = _runtime or Runtime(Settings.from_env())
    if event.get("source") == FLUSH_EVENT_SOURCE:
        buffer_ids = [int(i) for i in event.get("buffer_ids", [])]
        outcomes = _runner.run(_runtime.sweep_pass(buffer_ids, fallback=bool(event.get("fallback", True))))
    else:
        outcomes = _runner.run(_runtime.new_sweeper().run_until(_claim_deadline(_runtime.settings, context)))
    log.info("sweep finished: %s", dict(outcomes))
    return {"outcomes": dict(outcomes)}


def _claim_deadline(settings: Settings, context: Any) -> float:
    """Stop claiming after the loop time, or earlier if what we claim might outlive the timeout."""
    loop_end = time.monotonic() + settings.sweep_loop_seconds
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return loop_end
    # A claimed buffer may need a transcription and a model call, each with one retry, plus the
    # downloads, the reply and the retries of its recording: keep that much room.
    room_needed = 4 * settings.openai_timeout_seconds + 19
    return min(loop_end, time.monotonic() + context.get_remaining_time_in_millis() / 1000 - room_needed)
