"""Connector over a direct PostgreSQL connection (asyncpg), for serve, tests and benchmarks.

The pool is created lazily on first use, inside the running event loop: a Lambda container keeps
it across invocations, and nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Mapping

import asyncpg
import orjson

from shared.db.errors import StoreError, StoreUnavailable, redacted

log = logging.getLogger(__name__)

# Connection-level failures worth one more try on a fresh connection: a Lambda container thawed
# after minutes may hold sockets the server has since closed.
_RETRYABLE = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    ConnectionError,
    OSError,
)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # orjson, as for webhook bodies: every ingest sends two json arguments.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset that sends nothing. asyncpg's default sends RESET ALL, UNLISTEN, CLOSE ALL and
    pg_advisory_unlock_all on every release: a second round trip per call. Ours would have nothing
    to undo: every call is one auto-committed statement, locks are transaction-scoped, and no
    session setting is ever changed. (asyncpg still rolls back any open transaction itself.)"""


@functools.lru_cache(maxsize=64)
def call_sql(function: str, names: tuple[str, ...]) -> str:
    """`select * from public.fn(p_a => $1, ...)`: named arguments, as PostgREST calls them too."""
    args = ", ".join(f"{name} => ${i}" for i, name in enumerate(names, start=1))
    return f"select * from public.{function}({args})"


class PostgresConnector:
    def __init__(self, dsn: str, *, pool_size: int = 10, connect_timeout: float = 5,
                 transaction_pooler: bool = False) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        # Behind a transaction pooler each statement may reach another server connection, where a
        # statement asyncpg prepared by name on the previous one does not exist ("prepared statement
        # __asyncpg_stmt_a__ does not exist"). With no cache, asyncpg prepares every statement unnamed,
        # in the same round trip that runs it. (PgBouncer 1.21+ can keep named ones; Supavisor and
        # older PgBouncers, Debian 12's 1.18 among them, cannot.)
        self._statement_cache_size = 0 if transaction_pooler else 100
        self._pool: asyncpg.Pool | None = None
        self._pool_lock: asyncio.Lock | None = None

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool_lock = self._pool_lock or asyncio.Lock()
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=self._connect_timeout,
                        init=_init_connection,
                        reset=_keep_session,
                        max_inactive_connection_lifetime=240,
                        statement_cache_size=self._statement_cache_size,
                    )
        return self._pool

    async def call(self, function: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        sql = call_sql(function, tuple(params))
        for attempt in (1, 2):
            try:
                pool = await self._get_pool()
                rows = await pool.fetch(sql, *params.values())
                return [dict(row) for row in rows]
            except asyncpg.PostgresError as exc:
                # DETAIL is left out and the message redacted: either may quote the refused row. The
                # names of what refused it are identifiers, kept for the operator.
                names = ", ".join(f"{kind} {name}" for kind in ("table", "column", "constraint")
                                  if (name := getattr(exc, f"{kind}_name", None)))
                # `from None`: a logged traceback would otherwise print asyncpg's own error, DETAIL and all.
                raise StoreError(f"{function}: {exc.sqlstate} {redacted(str(exc))}" + (f" ({names})" if names else ""),
                                 code=exc.sqlstate) from None
            except _RETRYABLE as exc:
                if attempt == 2:
                    raise StoreUnavailable(f"{function}: database unreachable: {exc}") from exc
                log.warning("database connection lost during %s, retrying once: %s", function, exc)
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
