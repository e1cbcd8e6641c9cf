"""`chatbuffer migrate` and `chatbuffer sweep --once`, run as a user or a cron job runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import asyncpg

from shared.models import InboundMessage
from shared.runtime import Runtime
from shared.config import Settings
from tests.support.database import DatabaseFactory, with_database
from tests.support.far_side import FarSide
from tests.support.sql import buffers, execute, fetch, make_due


def chatbuffer(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shared.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


async def test_migrate_a_bare_database_twice(databases: DatabaseFactory) -> None:
    name = f"{databases.prefix}_bare_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(databases.server)
    await conn.execute(f'create database "{name}"')
    await conn.close()
    dsn = with_database(databases.server, name)
    try:
        first = chatbuffer("migrate", DATABASE_URL=dsn)
        assert first.returncode == 0, first.stderr
        assert "20261123000000" in first.stdout
        again = chatbuffer("migrate", DATABASE_URL=dsn)
        assert "none pending" in again.stdout
        roles = await fetch(dsn, "select rolname from pg_roles where rolname in ('anon', 'authenticated', 'service_role')")
        assert len(roles) == 3
    finally:
        await databases.drop(dsn)


async def test_sweep_once_answers_what_is_due(database_url: str, far_side: FarSide, settings: Settings) -> None:
    runtime = Runtime(settings)
    await runtime.store.ingest(InboundMessage("chatwoot", "3", "431", "m1", "Hola"))
    await runtime.close()
    await make_due(database_url)
    result = chatbuffer("sweep", "--once", DATABASE_URL=database_url, OPENAI_API_KEY="k",
                        OPENAI_BASE_URL=f"{far_side.url}/v1", CHATWOOT_BASE_URL=far_side.url, CHATWOOT_API_TOKEN="t")
    assert result.returncode == 0, result.stderr
    assert "completed" in result.stdout
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola"]
    assert (await buffers(database_url))[0]["status"] == "completed"


def test_impossible_environment_is_refused_clearly() -> None:
    result = chatbuffer("sweep", "--once", DATABASE_URL="postgresql://unused/x", BUFFER_WINDOW_SECONDS="400")
    assert result.returncode == 2
    assert "BUFFER_MAX_AGE_SECONDS (300) must be greater than BUFFER_WINDOW_SECONDS (400)" in result.stderr


async def test_status_retry_and_flush_as_an_operator_runs_them(database_url: str, far_side: FarSide,
                                                               settings: Settings) -> None:
    runtime = Runtime(settings)
    await runtime.store.ingest(InboundMessage("chatwoot", "3", "431", "m1", "Hola"))
    await runtime.store.ingest(InboundMessage("chatwoot", "3", "432", "m2", "¿Hay talla 27?"))
    await runtime.close()
    await execute(database_url, "update public.message_buffer set status = 'failed', attempts = 5,"
                                " last_error = 'HTTPStatusError: 502 Bad Gateway' where conversation_id = '431'")
    (failed_id,) = [r["id"] for r in await buffers(database_url) if r["status"] == "failed"]

    status = chatbuffer("status", DATABASE_URL=database_url)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    header, totals = lines[0].split(), lines[1].split()
    assert totals[:2] == ["all", "channels"]
    assert dict(zip(["waiting", "due", "now", "processing"], totals[2:]))["waiting"] == "1"
    assert f"FAILED burst {failed_id}  chatwoot 3/431" in status.stdout
    assert "HTTPStatusError: 502 Bad Gateway" in status.stdout and f"chatbuffer retry {failed_id}" in status.stdout
    as_json = json.loads(chatbuffer("status", "--json", DATABASE_URL=database_url).stdout)
    assert as_json["stats"]["totals"]["failed"] == 1 and as_json["failed"][0]["id"] == failed_id

    assert chatbuffer("retry", str(failed_id), DATABASE_URL=database_url).returncode == 0
    again = chatbuffer("retry", str(failed_id), DATABASE_URL=database_url)
    assert again.returncode == 1 and "is not failed" in again.stdout
    assert chatbuffer("retry", "999999", DATABASE_URL=database_url).returncode == 1

    flush = chatbuffer("flush", "chatwoot", "3", "432", DATABASE_URL=database_url)
    assert flush.returncode == 0 and "is due now" in flush.stdout, flush.stderr
    assert chatbuffer("flush", "chatwoot", "3", "999", DATABASE_URL=database_url).returncode == 1

    # Both are due now: one pass answers them, the retried one from scratch (it had no draft).
    swept = chatbuffer("sweep", "--once", DATABASE_URL=database_url, OPENAI_API_KEY="k",
                       OPENAI_BASE_URL=f"{far_side.url}/v1", CHATWOOT_BASE_URL=far_side.url, CHATWOOT_API_TOKEN="t")
    assert swept.returncode == 0, swept.stderr
    assert sorted(r["body"]["content"] for r in far_side.replies) == ["echo: Hola", "echo: ¿Hay talla 27?"]
    actions = await fetch(database_url, "select actor, via, action, outcome from public.admin_actions order by id")
    assert [(a["via"], a["action"], a["outcome"]) for a in actions] == [
        ("cli", "retry", "retried"), ("cli", "retry", "not_failed"), ("cli", "answer_now", "answering"),
        ("cli", "answer_now", "nothing_waiting")]
    assert all(a["actor"].startswith("cli") for a in actions)
