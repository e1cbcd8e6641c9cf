"""AdminStore: what an operator reads and does (admin API, CLI, playground), each one SQL function.

The functions (supabase/migrations/20261124100000_operator_view.sql) return JSON documents ready
for the API, so this class only names the calls. Every action takes the actor's name and where it
came from (api, cli, playground): the database keeps the audit trail.
"""

from __future__ import annotations

from typing import Any

from shared.config import BufferTiming
from shared.db.store import Connector

BURST_STATES = ("active", "processing", "retrying", "completed", "failed", "cancelled")


def _document(row: Any, column: str) -> Any:
    """A one-column jsonb result: {column: document} from a direct query, the document itself
    through PostgREST."""
    return row[column] if isinstance(row, dict) and row.keys() == {column} else row


def _first_document(rows: list[Any], column: str) -> Any:
    return _document(rows[0], column) if rows else None


class AdminStore:
    def __init__(self, connector: Connector, timing: BufferTiming) -> None:
        self._connector = connector
        self._defaults = timing.as_defaults()

    async def stats(self) -> dict[str, Any]:
        rows = await self._connector.call("admin_stats", {"p_defaults": self._defaults})
        return _first_document(rows, "stats")

    async def list_bursts(self, *, state: str | None = None, channel: str | None = None,
                          account_id: str | None = None, conversation_id: str | None = None,
                          limit: int = 50, before_id: int | None = None) -> list[dict[str, Any]]:
        """Newest first; pass the last id of a page as `before_id` for the next one."""
        rows = await self._connector.call("admin_list_bursts", {
            "p_defaults": self._defaults, "p_state": state, "p_channel": channel, "p_account_id": account_id,
            "p_conversation_id": conversation_id, "p_limit": limit, "p_before_id": before_id})
        return [_document(row, "burst") for row in rows]

    async def burst(self, buffer_id: int) -> dict[str, Any] | None:
        rows = await self._connector.call("admin_burst", {"p_buffer_id": buffer_id, "p_defaults": self._defaults})
        return _first_document(rows, "burst")

    async def conversation(self, channel: str, account_id: str, conversation_id: str,
                           limit: int = 20) -> dict[str, Any]:
        rows = await self._connector.call("admin_conversation", {
            "p_channel": channel, "p_account_id": account_id, "p_conversation_id": conversation_id,
            "p_defaults": self._defaults, "p_limit": limit})
        return _first_document(rows, "conversation")

    # --- actions: each returns the SQL function's row (its `outcome` says what it did) ----------

    async def retry(self, buffer_id: int, actor: str, via: str) -> dict[str, Any]:
        rows = await self._connector.call("admin_retry_burst",
                                          {"p_buffer_id": buffer_id, "p_actor": actor, "p_via": via})
        return rows[0]

    async def answer_now(self, channel: str, account_id: str, conversation_id: str, actor: str,
                         via: str) -> dict[str, Any]:
        return await self._conversation_action("admin_answer_now", channel, account_id, conversation_id, actor, via)

    async def cancel_waiting(self, channel: str, account_id: str, conversation_id: str, actor: str,
                             via: str) -> dict[str, Any]:
        return await self._conversation_action("admin_cancel_waiting", channel, account_id, conversation_id,
                                               actor, via)

    async def pause(self, channel: str, account_id: str, conversation_id: str, seconds: float | None,
                    actor: str, via: str) -> dict[str, Any]:
        return await self._conversation_action("admin_pause_bot", channel, account_id, conversation_id, actor, via,
                                               p_seconds=seconds)

    async def resume(self, channel: str, account_id: str, conversation_id: str, actor: str,
                     via: str) -> dict[str, Any]:
        return await self._conversation_action("admin_resume_bot", channel, account_id, conversation_id, actor, via)

    async def _conversation_action(self, function: str, channel: str, account_id: str, conversation_id: str,
                                   actor: str, via: str, **extra: Any) -> dict[str, Any]:
        params = {"p_channel": channel, "p_account_id": account_id, "p_conversation_id": conversation_id,
                  **extra, "p_actor": actor, "p_via": via}
        rows = await self._connector.call(function, params)
        return rows[0]
