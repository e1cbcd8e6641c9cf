"""The ingest benchmark's floor: a bare FastAPI endpoint that inserts one row per request.

Same framework, server, driver and pool size as chatbuffer's webhook; no signature check, no
parsing, no buffering. chatbuffer's ingest throughput is reported as a ratio of this one's.
"""

from __future__ import annotations

import os

import asyncpg

from shared.db.postgres import _keep_session
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

_pool: asyncpg.Pool | None = None


async def _get_pool() -> asyncpg.Pool:
    global _pool
    if _pool is None:
        # The same pool settings as chatbuffer's connector (shared/db/postgres.py), reset included.
        _pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, reset=_keep_session,
                                          max_size=int(os.environ.get("DATABASE_POOL_SIZE", "10")))
        await _pool.execute("create table if not exists bench_floor (id bigint generated always as identity"
                            " primary key, received_at timestamptz not null default now(), size integer not null)")
    return _pool


app = FastAPI()


@app.get("/health")
async def health() -> JSONResponse:
    await _get_pool()
    return JSONResponse({"status": "ok"})


@app.post("/webhooks/{channel}")
async def insert_one_row(channel: str, request: Request) -> JSONResponse:
    body = await request.body()
    pool = await _get_pool()
    await pool.execute("insert into bench_floor (size) values ($1)", len(body))
    return JSONResponse({"status": "stored"})
