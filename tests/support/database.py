"""TEST CODE: real PostgreSQL databases for tests and benchmarks.

The server is DATABASE_URL's when set, else the embedded one (pgserver) in .chatbuffer/test-pgdata.
The migrations are applied once to a template database; each test gets a fresh clone of it
(`CREATE DATABASE ... TEMPLATE`), which takes milliseconds.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.embedded import start_embedded_postgres
from shared.migrate import migrate

TEST_DATA_DIR = Path(__file__).resolve().parents[2] / ".chatbuffer" / "test-pgdata"


def server_dsn() -> str:
    return os.environ.get("DATABASE_URL") or start_embedded_postgres(TEST_DATA_DIR)


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class DatabaseFactory:
    def __init__(self, dsn: str) -> None:
        self.server = dsn
        self.prefix = f"cbt_{uuid.uuid4().hex[:8]}"
        self.template = f"{self.prefix}_template"
        self.created: list[str] = []

    async def build_template(self) -> None:
        await _admin(self.server, f'create database "{self.template}"')
        await migrate(with_database(self.server, self.template))

    async def fresh(self) -> str:
        name = f"{self.prefix}_{len(self.created)}"
        await _admin(self.server, f'create database "{name}" template "{self.template}"')
        self.created.append(name)
        return with_database(self.server, name)

    async def drop(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        await _admin(self.server, f'drop database if exists "{name}" with (force)')

    async def drop_all(self) -> None:
        for name in [*self.created, self.template]:
            await _admin(self.server, f'drop database if exists "{name}" with (force)')
