"""Where the reply leaves: one claimed buffer -> typing on -> one model call -> reply -> complete.

Failures never lose the burst: the buffer goes back for a retry with backoff (keeping a reply
already generated), and after max attempts it is `failed` with the error, for an operator.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol, TextIO

from shared.db.store import BufferStore
from shared.llm import Responder
from shared.models import ClaimedBuffer, RuntimeConfig

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """Where replies go: Chatwoot's API (shared/channels/chatwoot.py) or the console."""

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> None: ...

    async def set_typing(self, account_id: str, conversation_id: str, on: bool) -> None: ...


class ConsoleOutbox:
    """Local use without Chatwoot: replies are printed here (and stored as history as usual)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> None:
        stream = self._stream or sys.stdout
        print(f"[reply to chatwoot account {account_id} conversation {conversation_id}, "
              f"buffer {buffer_id}]\n{content}", file=stream, flush=True)

    async def set_typing(self, account_id: str, conversation_id: str, on: bool) -> None:
        return None


class LeaseLost(Exception):
    """Another worker took this buffer over (our lease expired): stop without sending anything."""


class BufferProcessor:
    def __init__(
        self, store: BufferStore, responder: Responder, outbox: Outbox, *,
        history_messages: int, lease_seconds: float, max_attempts: int, retry_backoff_seconds: float,
    ) -> None:
        self._store = store
        self._responder = responder
        self._outbox = outbox
        self._history_messages = history_messages
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_seconds

    async def process(self, buffer: ClaimedBuffer, config: RuntimeConfig) -> str:
        """Answer one claimed buffer; returns its outcome: completed, retry, failed or lease_lost."""
        started = time.monotonic()
        typing = config.typing_indicators
        if typing:
            await self._typing(buffer, True)
        reply = buffer.reply_draft
        try:
            if reply is None:
                turns = await self._store.buffer_prompt(buffer.buffer_id, self._history_messages)
                reply = await self._responder.reply(turns)
            # Fence before the one step that cannot be undone: if the lease was lost, another
            # worker owns the burst now, and sending would answer it twice.
            if not await self._store.extend_lease(buffer, self._lease_seconds):
                raise LeaseLost(f"buffer {buffer.buffer_id}: lease lost before sending")
            await self._outbox.post_reply(buffer.account_id, buffer.conversation_id, reply, buffer.buffer_id)
            if not await self._store.complete_buffer(buffer, reply):
                log.error("buffer %s: reply sent but the lease was gone at completion", buffer.buffer_id)
                return "lease_lost"
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lease_lost"
        except Exception as exc:  # any failure of the model, the channel or the store: retry later
            return await self._fail(buffer, exc, reply)
        finally:
            if typing:
                await self._typing(buffer, False)
        log.info("buffer %s completed: %s message(s), attempt %s, %.0f ms",
                 buffer.buffer_id, buffer.message_count, buffer.attempts, (time.monotonic() - started) * 1000)
        return "completed"

    async def _fail(self, buffer: ClaimedBuffer, exc: Exception, reply: str | None) -> str:
        error = f"{type(exc).__name__}: {exc}"
        try:
            status = await self._store.fail_buffer(
                buffer, error, max_attempts=self._max_attempts, backoff_seconds=self._backoff, reply_draft=reply
            )
        except Exception:
            # The lease will expire and reclaim_expired_leases will hand the buffer out again.
            log.exception("buffer %s: could not record failure (%s)", buffer.buffer_id, error)
            return "retry"
        if status == "failed":
            log.error("buffer %s failed for good after %s attempts: %s", buffer.buffer_id, buffer.attempts, error)
            return "failed"
        log.warning("buffer %s attempt %s failed, will retry: %s", buffer.buffer_id, buffer.attempts, error)
        return "retry"

    async def _typing(self, buffer: ClaimedBuffer, on: bool) -> None:
        try:
            await self._outbox.set_typing(buffer.account_id, buffer.conversation_id, on)
        except Exception as exc:  # a typing indicator is cosmetic: never fail a reply over it
            log.warning("buffer %s: typing %s failed: %s", buffer.buffer_id, "on" if on else "off", exc)
