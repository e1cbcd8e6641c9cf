"""The zero-setup database: a real PostgreSQL from the `pgserver` wheel, kept in a project folder.

Local and development use only (serve, migrate, tests without DATABASE_URL); never in the Lambda
package. pgserver listens on a Unix socket inside the data folder, so it never takes a TCP port.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(".chatbuffer") / "pgdata"


def start_embedded_postgres(data_dir: Path | None = None, *, database: str = "postgres") -> str:
    """Start (or reuse) the embedded server; returns a DSN. It stops when this process exits."""
    data_dir = (data_dir or Path(os.environ.get("CHATBUFFER_DATA_DIR", DEFAULT_DATA_DIR))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR on servers
        try:
            import pgserver
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "no DATABASE_URL and the embedded PostgreSQL is not installed: "
                "pip install -e '.[local]' (or set DATABASE_URL)"
            ) from exc
        # pgserver narrates its start-up at INFO (a dozen lines): only its problems matter here.
        logging.getLogger("pgserver").setLevel(logging.WARNING)
        server = pgserver.get_server(data_dir, cleanup_mode="stop")
    log.info("embedded PostgreSQL running in %s", data_dir)
    return to_dsn(server.get_uri(database))


def to_dsn(uri: str) -> str:
    """pgserver gives `postgresql://postgres:@/db?host=/socket/dir`; asyncpg wants no empty password."""
    return uri.replace("postgres:@", "postgres@", 1)
