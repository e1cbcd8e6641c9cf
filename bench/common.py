"""Shared plumbing of the benchmarks: databases, servers, statistics, results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence


from tests.support.database import DatabaseFactory
from tests.support.far_side import free_port
from tests.support.processes import wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
BENCH_DATA_DIR = ROOT / ".chatbuffer" / "bench-pgdata"


def server_dsn() -> str:
    """DATABASE_URL's server when set, else the embedded PostgreSQL (its own data folder)."""
    from shared.embedded import start_embedded_postgres

    return os.environ.get("DATABASE_URL") or start_embedded_postgres(BENCH_DATA_DIR)


@contextlib.asynccontextmanager
async def database_factory() -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(server_dsn())
    await factory.build_template()
    try:
        yield factory
    finally:
        await factory.drop_all()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def uvicorn_server(app: str, env: dict[str, str], *, factory: bool = False) -> Iterator[str]:
    """Run `app` under uvicorn (one worker, no access log) in a subprocess; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log"]
    if factory:
        command.append("--factory")
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SystemExit(f"{name} is needed for this benchmark: {install_hint}")
    return path


def machine() -> dict[str, Any]:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))
    return path
