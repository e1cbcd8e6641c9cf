"""BufferStore: every state change of a buffer, each one call to one SQL function.

The SQL functions in supabase/migrations do the atomic work; this class only names the calls and
turns rows into the project's types. A Connector carries a call to the database: directly over
PostgreSQL (shared/db/postgres.py) or, later, through Supabase's PostgREST.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from shared.config import BufferTiming
from shared.models import (
    ClaimedBuffer, ConversationSignal, InboundMessage, IngestResult, MessageEdit, PromptTurn, Reply, ReplyEcho,
    RuntimeConfig, SignalResult,
)


# A dead letter keeps the first 64 KB of the body (the SQL function cuts there too).
DEAD_LETTER_MAX_BYTES = 65536


class Connector(Protocol):
    async def call(self, function: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run `public.<function>(name => value, ...)` and return its rows."""

    async def close(self) -> None: ...


def _single(rows: list[Any], column: str) -> Any:
    """The value of a one-column result. PostgREST returns such rows as bare values, a direct
    query as {column: value}; both mean the same."""
    if not rows:
        return None
    row = rows[0]
    return row[column] if isinstance(row, dict) else row


def _message_params(message: InboundMessage) -> dict[str, Any]:
    """A customer's message as ingest_message and store_stale_message take it."""
    return {
        "p_channel": message.channel,
        "p_account_id": message.account_id,
        "p_conversation_id": message.conversation_id,
        "p_external_id": message.external_id,
        "p_content": message.content,
        "p_attachments": list(message.attachments),
        "p_sent_at": message.sent_at,
        "p_inbox_id": message.inbox_id,
    }


class BufferStore:
    def __init__(self, connector: Connector, timing: BufferTiming) -> None:
        self._connector = connector
        self._defaults = timing.as_defaults()

    async def close(self) -> None:
        await self._connector.close()

    async def ingest(self, message: InboundMessage) -> IngestResult:
        rows = await self._connector.call("ingest_message", {
            **_message_params(message), "p_defaults": self._defaults, "p_hold_reason": message.hold_reason,
            "p_platform_ref": message.platform_ref,
        })
        return IngestResult.from_row(rows[0])

    async def store_stale(self, message: InboundMessage, reason: str) -> IngestResult:
        """A message that arrived long after it was sent: history, never answered."""
        rows = await self._connector.call("store_stale_message", {**_message_params(message), "p_reason": reason})
        row = rows[0]
        return IngestResult(buffer_id=int(row["buffer_id"]), accepted=bool(row["accepted"]), message_count=1,
                            due_at=None, flush_now=False, others_due=False, settings_error=None, held_reason=reason)

    async def record_signal(self, signal: ConversationSignal, pause_seconds: float) -> SignalResult:
        """A human took over, or the conversation was resolved or handed back to the bot."""
        human = signal.message
        rows = await self._connector.call(
            "record_conversation_signal",
            {
                "p_channel": signal.channel,
                "p_account_id": signal.account_id,
                "p_inbox_id": signal.inbox_id,
                "p_conversation_id": signal.conversation_id,
                "p_signal": signal.kind,
                "p_reason": signal.reason,
                "p_signal_at": signal.at,
                "p_pause_seconds": pause_seconds,
                "p_external_id": human.external_id if human else None,
                "p_content": human.content if human else None,
                "p_attachments": list(human.attachments) if human else None,
                "p_sent_at": human.sent_at if human else None,
            },
        )
        return SignalResult.from_row(rows[0])

    async def record_reply_echo(self, echo: ReplyEcho) -> str:
        """Chatwoot echoed a reply we posted: it has left. Returns recorded, known or unknown."""
        rows = await self._connector.call(
            "record_reply_echo",
            {"p_channel": echo.channel, "p_account_id": echo.account_id, "p_buffer_id": echo.buffer_id,
             "p_platform_message_id": echo.platform_message_id})
        return str(_single(rows, "outcome"))

    async def edit_waiting_message(self, edit: MessageEdit) -> str:
        """Returns updated, unchanged, not_waiting (its burst is being answered or done) or unknown."""
        rows = await self._connector.call(
            "edit_waiting_message",
            {"p_channel": edit.channel, "p_account_id": edit.account_id, "p_external_id": edit.external_id,
             "p_content": edit.content, "p_attachments": list(edit.attachments)},
        )
        return str(_single(rows, "outcome"))

    async def record_dead_letter(self, channel: str, reason: str, body: bytes) -> int:
        rows = await self._connector.call(
            "record_dead_letter",
            {"p_channel": channel, "p_reason": reason, "p_body": body[:DEAD_LETTER_MAX_BYTES],
             "p_body_size": len(body)},
        )
        return int(_single(rows, "dead_letter_id"))

    async def claim_due_buffers(
        self, limit: int, lease_seconds: float, prefer_ids: Sequence[int] = ()
    ) -> list[ClaimedBuffer]:
        rows = await self._connector.call(
            "claim_due_buffers",
            {"p_limit": limit, "p_lease_seconds": lease_seconds, "p_prefer_ids": list(prefer_ids)},
        )
        return [ClaimedBuffer.from_row(row) for row in rows]

    async def buffer_prompt(self, buffer_id: int, history_limit: int) -> list[PromptTurn]:
        rows = await self._connector.call(
            "buffer_prompt", {"p_buffer_id": buffer_id, "p_history_limit": history_limit}
        )
        return [PromptTurn.from_row(row) for row in rows]

    async def save_transcript(self, buffer: ClaimedBuffer, external_id: str, attachment_index: int,
                              transcript: str) -> bool:
        rows = await self._connector.call(
            "save_transcript",
            {"p_channel": buffer.channel, "p_account_id": buffer.account_id, "p_external_id": external_id,
             "p_attachment_index": attachment_index, "p_transcript": transcript},
        )
        return bool(_single(rows, "saved"))

    async def fence_reply(self, buffer: ClaimedBuffer, lease_seconds: float, *, model_called: bool = False,
                          decision: Reply | None = None) -> str:
        """Right before sending: send, sent (the reply left already: do the rest without posting),
        lease_lost, cancelled (the bot was paused) or merged (the customer wrote again: the draft is
        discarded and the burst waits again). `model_called`:
        this attempt's decision came from a model call (counted in model_calls). On send, the
        `decision` is stored and the burst marked as being sent, before anything is posted."""
        rows = await self._connector.call(
            "fence_reply",
            {"p_buffer_id": buffer.buffer_id, "p_lease_token": buffer.lease_token,
             "p_lease_seconds": lease_seconds, "p_defaults": self._defaults, "p_model_called": model_called,
             "p_reply_draft": decision.text if decision else None,
             "p_handoff_reason": decision.handoff_reason if decision else None},
        )
        return str(_single(rows, "verdict"))

    async def mark_reply_sent(self, buffer: ClaimedBuffer) -> bool:
        rows = await self._connector.call(
            "mark_reply_sent", {"p_buffer_id": buffer.buffer_id, "p_lease_token": buffer.lease_token})
        return bool(_single(rows, "marked"))

    async def extend_lease(self, buffer: ClaimedBuffer, lease_seconds: float) -> bool:
        rows = await self._connector.call(
            "extend_lease",
            {"p_buffer_id": buffer.buffer_id, "p_lease_token": buffer.lease_token, "p_lease_seconds": lease_seconds},
        )
        return bool(_single(rows, "extended"))

    async def complete_buffer(self, buffer: ClaimedBuffer, reply: Reply | str,
                              pause_seconds: float | None = None, platform_message_id: str | None = None) -> bool:
        """The burst is done: replied, no reply, or handed off (which pauses the bot for
        `pause_seconds`). `platform_message_id`: the reply's id on the channel."""
        reply = Reply(reply) if isinstance(reply, str) else reply
        rows = await self._connector.call(
            "complete_buffer",
            {"p_buffer_id": buffer.buffer_id, "p_lease_token": buffer.lease_token, "p_reply": reply.text,
             "p_outcome": reply.outcome, "p_handoff_reason": reply.handoff_reason,
             "p_pause_seconds": pause_seconds, "p_platform_message_id": platform_message_id},
        )
        return bool(_single(rows, "completed"))

    async def fail_buffer(
        self, buffer: ClaimedBuffer, error: str, *, max_attempts: int, backoff_seconds: float,
        reply_draft: str | Reply | None = None, model_called: bool = False, retry_after: float | None = None,
        delivery: str = "none", send_grace_seconds: float = 0,
    ) -> str | None:
        """Record a failed attempt; returns the new status ('processing' = will retry, 'failed').
        A decision already taken is kept for the retry; `model_called`: a model call of this
        attempt the fence did not count yet; `retry_after`: told to slow down (a 429), the burst
        waits that long and the attempt is not counted; `delivery`: what became of the reply's post,
        none (never began, or refused), unknown (it may have arrived: the retry waits
        `send_grace_seconds` for Chatwoot's echo) or left (a retry must not post it again)."""
        draft = Reply(reply_draft) if isinstance(reply_draft, str) else reply_draft
        rows = await self._connector.call(
            "fail_buffer",
            {
                "p_buffer_id": buffer.buffer_id,
                "p_lease_token": buffer.lease_token,
                "p_error": error,
                "p_max_attempts": max_attempts,
                "p_backoff_seconds": backoff_seconds,
                "p_reply_draft": draft.text if draft else None,
                "p_handoff_reason": draft.handoff_reason if draft else None,
                "p_model_called": model_called,
                "p_retry_after_seconds": retry_after,
                "p_delivery": delivery,
                "p_send_grace_seconds": send_grace_seconds,
            },
        )
        return rows[0]["status"] if rows else None

    async def reclaim_expired_leases(self, max_attempts: int, send_grace_seconds: float = 0) -> list[tuple[int, str]]:
        """Bursts whose worker stopped; one whose reply may have left waits `send_grace_seconds`
        from its post for Chatwoot's echo before it is posted again."""
        rows = await self._connector.call("reclaim_expired_leases", {"p_max_attempts": max_attempts,
                                                                     "p_send_grace_seconds": send_grace_seconds})
        return [(int(row["buffer_id"]), row["status"]) for row in rows]

    async def seconds_until_next_due(self) -> float | None:
        rows = await self._connector.call("seconds_until_next_due", {})
        seconds = _single(rows, "seconds")
        return None if seconds is None else float(seconds)

    async def purge_finished_buffers(self, older_than_seconds: float, batch_size: int) -> int:
        rows = await self._connector.call(
            "purge_finished_buffers", {"p_older_than_seconds": older_than_seconds, "p_batch_size": batch_size}
        )
        return int(_single(rows, "purged"))

    async def runtime_config(self) -> RuntimeConfig:
        rows = await self._connector.call("runtime_config", {"p_defaults": self._defaults})
        return RuntimeConfig.from_row(rows[0])
