"""Security by default: the API roles reach nothing; the schema passes Supabase's linter rules."""

from __future__ import annotations

import asyncpg
import pytest

from shared.db.errors import StoreError
from shared.db.store import BufferStore
from shared.db.supabase import SupabaseConnector
from shared.config import BufferTiming
from tests.conftest import ANON_KEY, AUTHENTICATED_KEY
from tests.support.sql import fetch

API_ROLES = ["anon", "authenticated"]


async def public_tables(dsn: str) -> list[str]:
    rows = await fetch(dsn, "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                            " where n.nspname = 'public' and c.relkind = 'r' order by 1")
    return [r["relname"] for r in rows]


async def public_functions(dsn: str) -> list[dict]:
    return await fetch(dsn, "select p.oid, p.proname, p.prosecdef, p.proconfig,"
                            " pg_get_function_identity_arguments(p.oid) as args"
                            " from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                            " where n.nspname = 'public' order by 2")


async def test_every_table_has_rls_and_a_deny_policy(database_url: str) -> None:  # lints 0008, 0013
    tables = await public_tables(database_url)
    assert set(tables) >= {"message_buffer", "buffered_messages", "feature_flags", "buffer_settings"}
    rows = await fetch(database_url, "select c.relname, c.relrowsecurity,"
                                     " (select count(*) from pg_policy p where p.polrelid = c.oid) as policies"
                                     " from pg_class c where c.relname = any($1::text[])", tables)
    assert all(r["relrowsecurity"] and r["policies"] >= 1 for r in rows), rows


async def test_every_function_pins_search_path_and_none_is_security_definer(database_url: str) -> None:  # 0011, 0028, 0029
    functions = await public_functions(database_url)
    assert len(functions) >= 15
    for f in functions:
        assert f["proconfig"] and 'search_path=""' in f["proconfig"], f["proname"]
        assert not f["prosecdef"], f["proname"]


@pytest.mark.parametrize("role", API_ROLES)
async def test_api_roles_can_read_change_and_call_nothing(database_url: str, role: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for table in await public_tables(database_url):
            for privilege in ("select", "insert", "update", "delete", "truncate", "references", "trigger"):
                assert not await conn.fetchval("select has_table_privilege($1, $2, $3)",
                                               role, f"public.{table}", privilege), (role, table, privilege)
        for f in await public_functions(database_url):
            assert not await conn.fetchval("select has_function_privilege($1, $2::oid, 'execute')",
                                           role, f["oid"]), (role, f["proname"])
        # And in practice, as that role:
        await conn.execute(f"set role {role}")
        for statement in ("select * from public.message_buffer", "select * from public.buffered_messages",
                          "update public.feature_flags set is_enabled = false",
                          "delete from public.buffer_settings",
                          "select * from public.claim_due_buffers(1, 1)",
                          "select * from public.runtime_config('{}'::jsonb)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_service_role_has_exactly_what_the_backend_needs(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for f in await public_functions(database_url):
            allowed = await conn.fetchval("select has_function_privilege('service_role', $1::oid, 'execute')", f["oid"])
            operator_only = f["proname"] in {"enable_cron_sweep", "disable_cron_sweep"}
            assert allowed is not operator_only, f["proname"]
    finally:
        await conn.close()


@pytest.mark.parametrize("key", [ANON_KEY, AUTHENTICATED_KEY])
async def test_the_public_keys_get_nothing_through_the_data_api(gateway_url: str, key: str) -> None:
    store = BufferStore(SupabaseConnector(gateway_url, key), BufferTiming())
    try:
        for call in (store.runtime_config(), store.claim_due_buffers(1, 1), store.seconds_until_next_due()):
            with pytest.raises(StoreError) as caught:
                await call
            assert caught.value.code == "42501"
    finally:
        await store.close()


async def test_optional_cron_sweep_is_off_and_says_what_it_needs(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("select disable_cron_sweep()") == "chatbuffer-sweep not scheduled"
        with pytest.raises(asyncpg.PostgresError, match="needs the pg_cron and pg_net extensions"):
            await conn.execute("select enable_cron_sweep('https://api.example/sweep', 'token')")
    finally:
        await conn.close()
