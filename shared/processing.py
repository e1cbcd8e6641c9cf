"""Where the reply leaves: one claimed buffer -> typing on -> media -> one model call -> fence ->
reply (and hand-off) -> complete.

The fence (`fence_reply` in SQL) is the last step before anything reaches the customer, atomic with
ingest: if the lease was lost, nothing is sent; if a human took over meanwhile, the burst is
cancelled; if the customer wrote again while the reply was being written, the draft is discarded
and the burst waits again with the new messages, so one reply answers them all (past
BUFFER_MAX_AGE_SECONDS the draft is sent, so a customer who never stops typing is still answered).

Failures never lose the burst: the buffer goes back for a retry with backoff (keeping a decision
already taken), and after max attempts it is `failed` with the error, for an operator.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

from shared.channels.base import PermanentSendError
from shared.channels.router import PartlySent
from shared.db.errors import StoreError
from shared.db.store import BufferStore
from shared.llm import Responder
from shared.media import MediaPreparer
from shared.metrics import Metrics
from shared.models import ClaimedBuffer, Reply, RuntimeConfig
from shared.ratelimits import retry_after

log = logging.getLogger(__name__)


class Outbox(Protocol):
    """Where replies go and media come from: shared/channels/router.py, which hands each call to
    the client of the burst's channel."""

    async def post_reply(self, buffer: ClaimedBuffer, text: str) -> str | None:
        """Post the reply (split under the channel's limit); returns the channel's id for it."""

    async def set_typing(self, buffer: ClaimedBuffer, on: bool, last_message_id: str | None = None) -> None: ...

    async def hand_off(self, buffer: ClaimedBuffer, reason: str) -> None: ...


# Recording a reply that has left is retried this often (seconds before each try), never its post.
COMPLETION_RETRY_DELAYS = (0, 0.5, 1, 2)


@dataclass
class Delivery:
    """What became of the reply's post in this attempt: none (not posted, or refused), unknown (no
    answer, or a server error: it may have arrived), left; and the channel's id for it."""

    outcome: str = "none"
    message_id: str | None = None


def _post_refused(exc: BaseException) -> bool:
    """The channel itself refused the post (a 4xx, a 429 included, or its own 500): it did not
    arrive. No answer, a timeout, or a gateway's 502/503/504 leave it unknown."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and (400 <= status < 500 and status != 408 or status == 500)


class LeaseLost(Exception):
    """Another worker took this buffer over (our lease expired): stop without sending anything."""


class BufferProcessor:
    def __init__(
        self, store: BufferStore, responder: Responder, outbox: Outbox, media: MediaPreparer, *,
        history_messages: int, lease_seconds: float, max_attempts: int, retry_backoff_seconds: float,
        pause_seconds: float, metrics: Metrics | None = None, send_grace_seconds: float = 0,
    ) -> None:
        self._store = store
        self._responder = responder
        self._outbox = outbox
        self._media = media
        self._history_messages = history_messages
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_seconds
        self._pause_seconds = pause_seconds
        self._metrics = metrics or Metrics(enabled=False)
        self._send_grace_seconds = send_grace_seconds

    async def process(self, buffer: ClaimedBuffer, config: RuntimeConfig) -> str:
        """Answer one claimed buffer. Returns its outcome: completed, merged (the customer wrote
        again: the draft was discarded), cancelled (a human took over), retry, failed or lease_lost."""
        started = time.monotonic()
        typing = config.typing_indicators
        reply = buffer.draft
        uncounted_call = False  # a model call of this attempt that no SQL function has counted yet
        delivery = Delivery()
        try:
            if reply is None:
                reply = await self._decide(buffer, config, typing)
                uncounted_call = True
            elif typing:  # a decision taken already: only its sending is left
                await self._typing(buffer, True)
            # The decision is stored, and the burst marked as being sent, before anything is posted.
            verdict = await self._store.fence_reply(buffer, self._lease_seconds, model_called=uncounted_call,
                                                    decision=reply)
            uncounted_call = False
            if verdict not in ("send", "sent"):
                return self._not_sent(buffer, verdict)
            await self._deliver(buffer, reply, delivery, already_sent=verdict == "sent")
        except LeaseLost as exc:
            log.warning("%s", exc)
            return "lease_lost"
        except PartlySent as exc:  # the retry sends only what is left
            rest = Reply(exc.remainder, reply.handoff_reason if reply else None)
            return await self._fail(buffer, exc, rest, model_called=False, delivery=delivery.outcome)
        except Exception as exc:  # any failure of media, the model, the channel or the store: retry later
            return await self._fail(buffer, exc, reply, model_called=uncounted_call, delivery=delivery.outcome)
        finally:
            if typing:
                await self._typing(buffer, False)
        outcome = await self._record_completion(buffer, reply, delivery.message_id)
        if outcome != "completed":
            return outcome
        elapsed_ms = (time.monotonic() - started) * 1000
        self._metrics.count("BurstsAnswered")
        self._metrics.observe_ms("ReplyLateness", (datetime.now(timezone.utc) - buffer.due_at).total_seconds() * 1000)
        log.info("buffer %s completed (%s): %s message(s), attempt %s, %.0f ms", buffer.buffer_id, reply.outcome,
                 buffer.message_count, buffer.attempts, elapsed_ms,
                 extra={"buffer_id": buffer.buffer_id, "outcome": reply.outcome, "messages": buffer.message_count,
                        "attempt": buffer.attempts, "duration_ms": round(elapsed_ms)})
        return "completed"

    async def _decide(self, buffer: ClaimedBuffer, config: RuntimeConfig, typing: bool) -> Reply:
        turns = await self._store.buffer_prompt(buffer.buffer_id, self._history_messages)
        if typing:  # on the customer's last message: WhatsApp marks it read and shows typing on it
            await self._typing(buffer, True, next((t.platform_ref or t.external_id for t in reversed(turns)
                                                   if t.in_burst and t.role == "user"), None))
        if any(turn.in_burst and turn.attachments for turn in turns):
            turns = await self._media.prepare(buffer, turns, config)
            # Downloads and transcriptions take time: hold the lease for the model call that follows.
            if not await self._store.extend_lease(buffer, self._lease_seconds):
                raise LeaseLost(f"buffer {buffer.buffer_id}: lease lost before the model call")
        started = time.monotonic()
        reply = await self._responder.reply(turns)
        self._metrics.count("ModelCalls")
        self._metrics.observe_ms("ModelLatency", (time.monotonic() - started) * 1000)
        return reply

    async def _deliver(self, buffer: ClaimedBuffer, reply: Reply, delivery: Delivery, *, already_sent: bool) -> None:
        """Send the reply (if any, and not sent already), then hand off (if asked). A hand-off
        retried after its reply left must not send the reply again: that is recorded first."""
        if reply.text and not already_sent:
            try:
                delivery.message_id = await self._outbox.post_reply(buffer, reply.text)
            except Exception as exc:
                cause = exc.cause if isinstance(exc, PartlySent) else exc
                delivery.outcome = "none" if _post_refused(cause) else "unknown"
                raise
            delivery.outcome = "left"
            if reply.handoff_reason:
                await self._store.mark_reply_sent(buffer)
        if reply.handoff_reason:
            await self._outbox.hand_off(buffer, reply.handoff_reason)

    async def _record_completion(self, buffer: ClaimedBuffer, reply: Reply, message_id: str | None) -> str:
        """The reply has left: record that, retrying the recording (never the post) while the
        database fails. If it never succeeds, the lease runs out, and the reclaim waits for
        Chatwoot's echo of the reply (which marks it sent) before anything is posted again."""
        for delay in COMPLETION_RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                if await self._store.complete_buffer(buffer, reply, pause_seconds=self._pause_seconds,
                                                     platform_message_id=message_id):
                    return "completed"
                log.error("buffer %s: reply sent but the lease was gone at completion", buffer.buffer_id)
                return "lease_lost"
            except StoreError as exc:
                log.warning("buffer %s: the reply left but recording it failed, trying again: %s", buffer.buffer_id, exc)
        log.error("buffer %s: the reply left and could not be recorded; when its lease runs out, the reclaim "
                  "waits for Chatwoot's echo before posting again", buffer.buffer_id)
        return "unrecorded"

    def _not_sent(self, buffer: ClaimedBuffer, verdict: str) -> str:
        self._metrics.count({"merged": "DiscardedDrafts", "cancelled": "BurstsCancelled"}.get(verdict, "LeasesLost"))
        if verdict == "merged":
            log.info("buffer %s: the customer wrote again while the reply was being written: draft discarded, "
                     "the burst waits again with the new messages", buffer.buffer_id)
        elif verdict == "cancelled":
            log.info("buffer %s: the bot was paused (a human took over) before the reply was sent: cancelled",
                     buffer.buffer_id)
        else:
            log.warning("buffer %s: lease lost before sending", buffer.buffer_id)
        return verdict

    async def _fail(self, buffer: ClaimedBuffer, exc: Exception, reply: Reply | None, *, model_called: bool,
                    delivery: str) -> str:
        error = f"{type(exc).__name__}: {exc}"
        wait = retry_after(exc)
        if wait is not None:
            return await self._defer(buffer, wait, error, reply, model_called=model_called, delivery=delivery)
        # A refusal no retry can change (outside WhatsApp's 24-hour window): failed at once, visibly.
        max_attempts = buffer.attempts if isinstance(exc, PermanentSendError) else self._max_attempts
        try:
            status = await self._store.fail_buffer(
                buffer, error, max_attempts=max_attempts, backoff_seconds=self._backoff, reply_draft=reply,
                model_called=model_called, delivery=delivery, send_grace_seconds=self._send_grace_seconds,
            )
        except Exception:
            # The lease will expire and reclaim_expired_leases will hand the buffer out again.
            log.exception("buffer %s: could not record failure (%s)", buffer.buffer_id, error)
            return "retry"
        if status == "failed":
            self._metrics.count("BurstsFailed")
            log.error("buffer %s failed for good after %s attempts: %s", buffer.buffer_id, buffer.attempts, error)
            return "failed"
        log.warning("buffer %s attempt %s failed, will retry: %s", buffer.buffer_id, buffer.attempts, error)
        return "retry"

    async def _defer(self, buffer: ClaimedBuffer, wait: float, error: str, reply: Reply | None, *,
                     model_called: bool, delivery: str) -> str:
        """A 429: back in `wait` seconds, as the server asked; the attempt is not counted in the
        burst's first hour (after that the refusals are an outage, and the burst can end failed)."""
        try:
            status = await self._store.fail_buffer(buffer, f"rate limited, retrying in {wait:.0f} s: {error}",
                                          max_attempts=self._max_attempts, backoff_seconds=self._backoff,
                                          reply_draft=reply, model_called=model_called, retry_after=wait,
                                          delivery=delivery, send_grace_seconds=self._send_grace_seconds)
        except Exception:
            log.exception("buffer %s: could not record the rate limit (%s)", buffer.buffer_id, error)
            return "retry"
        self._metrics.count("RateLimited")
        if status == "failed":
            self._metrics.count("BurstsFailed")
            log.error("buffer %s failed for good: still rate limited after its first hour: %s", buffer.buffer_id, error)
            return "failed"
        log.warning("buffer %s rate limited, retrying in %.0f s: %s", buffer.buffer_id, wait, error)
        return "deferred"

    async def _typing(self, buffer: ClaimedBuffer, on: bool, last_message_id: str | None = None) -> None:
        try:
            await self._outbox.set_typing(buffer, on, last_message_id)
        except Exception as exc:  # a typing indicator is cosmetic: never fail a reply over it
            log.warning("buffer %s: typing %s failed: %s", buffer.buffer_id, "on" if on else "off", exc)
