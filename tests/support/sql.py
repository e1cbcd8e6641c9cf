"""TEST CODE: direct SQL for arranging and inspecting state (never used by the app)."""

from __future__ import annotations

from typing import Any

import asyncpg


async def fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def execute(dsn: str, query: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


async def make_due(dsn: str, buffer_id: int | None = None) -> None:
    """Jump a buffer (or all unfinished ones) past its due time instead of sleeping in a test."""
    await execute(dsn, "update public.message_buffer set due_at = now() - interval '1 second'"
                       " where status in ('active', 'processing') and lease_token is null"
                       " and ($1::bigint is null or id = $1)", buffer_id)


async def set_flag(dsn: str, name: str, enabled: bool) -> None:
    await execute(dsn, "update public.feature_flags set is_enabled = $2 where flag_name = $1", name, enabled)


async def buffers(dsn: str) -> list[dict[str, Any]]:
    return await fetch(dsn, "select * from public.message_buffer order by id")
