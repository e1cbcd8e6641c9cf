"""DATABASE_URL on a transaction pooler (Supabase's Supavisor, port 6543; here a real PgBouncer in
transaction mode): webhooks and sweeps work, with no prepared statement lost between connections."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from typing import Iterator

import asyncpg
import pytest

from shared.config import Settings
from shared.runtime import Runtime
from tests.conftest import incoming
from tests.support.database import server_dsn
from tests.support.far_side import FarSide
from tests.support.pgbouncer import pgbouncer, through
from tests.support.sql import buffers, make_due
from tests.support.webhook import Bot


@pytest.fixture
def bouncer(database_url: str) -> Iterator[str]:
    with pgbouncer(server_dsn(), pool_size=3) as template:
        yield through(template, database_url)


async def test_webhooks_and_sweeps_work_through_a_transaction_pooler(
        bouncer: str, settings: Settings, far_side: FarSide, database_url: str) -> None:
    bot = Bot(Runtime(dataclasses.replace(settings, database_url=bouncer, database_pooler="transaction",
                                          database_pool_size=8)))
    try:
        # Many connections of ours over 3 server connections: statements hop between them.
        posts = [bot.post(incoming(1000 + n, f"mensaje {n}", conversation_id=500 + n % 12)) for n in range(120)]
        answers = await asyncio.gather(*posts)
        assert sorted({a.status_code for a in answers}) == [200], [a.text for a in answers if a.status_code != 200]
        assert {a.json()["status"] for a in answers} == {"buffered"}
        await make_due(database_url)
        sweeps = await asyncio.gather(*(bot.runtime.new_sweeper().run_once() for _ in range(3)))
        assert sum(s["completed"] for s in sweeps) == 12 and not any(s.get("crashed") for s in sweeps)
    finally:
        await bot.close()
    assert len(far_side.public_replies()) == 12
    rows = await buffers(database_url)
    assert [r["status"] for r in rows] == ["completed"] * 12 and sum(r["message_count"] for r in rows) == 120


async def test_the_pooler_in_the_test_is_a_real_transaction_pooler(bouncer: str) -> None:
    """The control: asyncpg's default statement cache breaks behind it, as it did for users."""
    pool = await asyncpg.create_pool(bouncer, min_size=6, max_size=6)
    try:
        results = await asyncio.gather(*(pool.fetchval("select $1::int + 1", n) for n in range(200)),
                                       return_exceptions=True)
    finally:
        await pool.close()
    assert any(isinstance(r, asyncpg.exceptions.PostgresError) and "prepared statement" in str(r) for r in results)


def test_port_6543_means_a_transaction_pooler_unless_told_otherwise() -> None:
    supavisor = "postgresql://postgres.ref:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres"
    assert Settings.from_env({"DATABASE_URL": supavisor}).database_pooler == "transaction"
    assert Settings.from_env({"DATABASE_URL": supavisor, "DATABASE_POOLER": "session"}).database_pooler == "session"
    assert Settings.from_env({"DATABASE_URL": "postgresql://db:5432/x"}).database_pooler == "none"
    assert Settings.from_env({"DATABASE_URL": "postgresql://db:6432/x",
                              "DATABASE_POOLER": "TRANSACTION"}).database_pooler == "transaction"


def test_migrate_refuses_a_transaction_pooler_clearly(bouncer: str) -> None:
    result = subprocess.run([sys.executable, "-m", "shared.cli", "migrate"], capture_output=True, text=True,
                            env={**os.environ, "DATABASE_URL": bouncer, "DATABASE_POOLER": "transaction"}, timeout=60)
    assert result.returncode == 2
    assert "migrations need a session" in result.stderr
