"""Apply supabase/migrations to a database, in file-name order, each file once.

Applied versions are recorded where the Supabase CLI records them
(supabase_migrations.schema_migrations), so `supabase db push` and `chatbuffer migrate` agree on
what a database already has. Supabase's API roles are created when absent, so the same files run
on a bare PostgreSQL.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "supabase" / "migrations"
_FILE_NAME = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
end
$$;
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
    version text primary key,
    statements text[],
    name text
);
"""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path


def find_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named <YYYYMMDDHHMMSS>_<name>.sql")
        migrations.append(Migration(match["version"], match["name"], path))
    return migrations


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is missing; returns the versions applied now."""
    conn = await asyncpg.connect(dsn)
    try:
        # Two deploys migrating at once take turns instead of colliding.
        await conn.execute("select pg_advisory_lock(hashtext('chatbuffer migrate'))")
        await conn.execute(_BOOTSTRAP)
        done = {r["version"] for r in await conn.fetch("select version from supabase_migrations.schema_migrations")}
        applied = []
        for migration in find_migrations(directory):
            if migration.version in done:
                continue
            sql = migration.path.read_text()
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "insert into supabase_migrations.schema_migrations (version, name, statements)"
                    " values ($1, $2, $3)",
                    migration.version, migration.name, [sql],
                )
            log.info("applied migration %s_%s", migration.version, migration.name)
            applied.append(migration.version)
        return applied
    finally:
        await conn.close()
