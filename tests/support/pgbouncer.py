"""TEST CODE: a real PgBouncer (Debian's `pgbouncer` package) in transaction mode, in front of the
test server: what Supabase's transaction pooler (Supavisor, port 6543) is to a deployment.

PgBouncer refuses to run as root: as root it is started as the owner of the server's socket folder
(the embedded PostgreSQL), or as `nobody` for a TCP server. `.ci/run` installs the package; without
it the pooler tests are skipped, except under CI, where a missing PgBouncer is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from tests.support.far_side import free_port
from tests.support.packages import debian_package

def require_pgbouncer() -> str:
    return debian_package("pgbouncer", "/usr/sbin/pgbouncer", tested="the transaction pooler")


def _upstream(server_dsn: str) -> tuple[str, int, str | None]:
    """host (or socket folder), port, and who owns the socket folder (None for TCP)."""
    parts = urlsplit(server_dsn)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if socket_dir:
        return socket_dir, parts.port or 5432, Path(socket_dir).owner()
    return parts.hostname or "127.0.0.1", parts.port or 5432, None


@contextlib.contextmanager
def pgbouncer(server_dsn: str, *, pool_size: int = 5) -> Iterator[str]:
    """Run PgBouncer in transaction mode in front of `server_dsn`'s server; yields a DSN template
    (`postgresql://postgres@127.0.0.1:<port>/`) to which a database name is appended."""
    binary = require_pgbouncer()
    host, port, owner = _upstream(server_dsn)
    listen = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    config = folder / "pgbouncer.ini"
    config.write_text(f"""
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
server_reset_query =
""")
    (folder / "users.txt").write_text('"postgres" ""\n')
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    command = [binary, str(config)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", owner or "nobody"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_listening(listen, process)
        yield f"postgresql://postgres@127.0.0.1:{listen}/"
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)


def through(bouncer: str, database_dsn: str) -> str:
    """The same database, reached through the pooler."""
    return bouncer + urlsplit(database_dsn).path.lstrip("/")


def _wait_listening(port: int, process: subprocess.Popen[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {process.stdout.read() if process.stdout else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on {port} in {timeout} s")
