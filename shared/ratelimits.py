"""Being told to slow down: a 429's Retry-After, and a channel's request budget.

A 429 from the model provider or a channel is not a failure: the burst waits until the time the
server asked for and the attempt is not counted (`fail_buffer` with its Retry-After). A self-hosted Chatwoot allows
3000 requests a minute per IP (rack-attack): ChatwootClient spends at most
CHATWOOT_REQUESTS_PER_MINUTE (2400 by default) per process, typing calls, replies and downloads
together, so a sweeper working off a large backlog stays under it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

DEFAULT_RETRY_AFTER_SECONDS = 20.0
MAX_RETRY_AFTER_SECONDS = 900.0


def retry_after(exc: BaseException) -> float | None:
    """Seconds to wait if `exc` is an HTTP 429 (httpx's or the OpenAI SDK's), else None."""
    response: Any = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != 429:
        return None
    if getattr(exc, "code", None) == "insufficient_quota":  # OpenAI's 429 for an unpaid bill: no waiting helps
        return None
    return parse_retry_after(response.headers.get("retry-after"))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float:
    """Retry-After as seconds or an HTTP date; missing or unreadable: a default. Within 1 s..15 min."""
    seconds = DEFAULT_RETRY_AFTER_SECONDS
    if value:
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
                seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
            except (TypeError, ValueError, IndexError):
                seconds = DEFAULT_RETRY_AFTER_SECONDS
    if seconds != seconds:  # NaN
        seconds = DEFAULT_RETRY_AFTER_SECONDS
    return min(max(seconds, 1.0), MAX_RETRY_AFTER_SECONDS)
