"""TEST CODE: a PostgreSQL instance of the test's own, which it stops and starts again (the
embedded server's binaries, in a temporary folder), for fault tests: the app must answer while
the database is gone as Chatwoot needs it, and recover by itself when it is back."""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from shared.embedded import to_dsn


class ManagedPostgres:
    def __init__(self, folder: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
            from pgserver._commands import pg_ctl

        self._pg_ctl = pg_ctl
        self.server: Any = pgserver.get_server(folder / "pgdata", cleanup_mode="delete")
        self.dsn = to_dsn(self.server.get_uri("postgres"))

    def stop(self) -> None:
        """A fast shutdown, as a crash or a failover looks to a client: connections are cut."""
        self._pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


@contextlib.contextmanager
def managed_postgres() -> Iterator[ManagedPostgres]:
    folder = Path(tempfile.mkdtemp(prefix="chatbuffer-pg-"))
    folder.chmod(0o755)  # the server may run as another user (root cannot run PostgreSQL)
    instance = ManagedPostgres(folder)
    try:
        yield instance
    finally:
        instance.close()
