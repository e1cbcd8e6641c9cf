"""Cold start: a fresh Python process importing the webhook and answering its first request.

Each sample is a new interpreter, as a new Lambda container is. Against it, in the same run and
alternating with it: a process that only imports fastapi and mangum (the floor every FastAPI-on-
Lambda app pays). Reported: import time alone (measured inside the process) and whole-process
wall time up to the first answer, for GET /health and for a signed webhook stored in PostgreSQL
(which includes opening the first database connection).

Every channel is configured (WhatsApp, Messenger/Instagram, Twilio besides Chatwoot), so their
adapters load at start as in such a deployment; BENCH_COLDSTART_CHANNELS=chatwoot measures a
Chatwoot-only one.

The processes run in a virtual environment holding only what the Lambda package holds
(requirements-lambda.txt), built once in .chatbuffer/lambda-venv: the development environment
has extras (click, pygments...) that some libraries import when present, which Lambda would not.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, database_factory, median
from bench.ingest import CHANNEL_ENV

SECRET = "bench-webhook-secret"

FLOOR = """
import time; t0 = time.perf_counter()
import fastapi, mangum
print(time.perf_counter() - t0)
"""

# On Supabase the first request also imports the Data API client (supabase-py's PostgREST).
SUPABASE_IMPORT = """
import time; t0 = time.perf_counter()
import functions.webhook, shared.db.supabase
print(time.perf_counter() - t0)
"""

WEBHOOK = """
import json, sys, time; t0 = time.perf_counter()
import functions.webhook as webhook
imported = time.perf_counter() - t0
from tests.support.aws_events import LambdaContext, http_api_event
kind = sys.argv[1]
if kind == "health":
    event = http_api_event("GET", "/health")
else:
    from shared.channels.chatwoot import sign
    payload = json.load(open("tests/fixtures/chatwoot/message_created_incoming_text.json"))
    sent_now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # a captured created_at would be stale
    body = json.dumps({**payload, "id": int(sys.argv[2]), "created_at": sent_now}).encode()
    ts = str(int(time.time()))
    headers = {"content-type": "application/json", "x-chatwoot-timestamp": ts,
               "x-chatwoot-signature": sign(sys.argv[3], ts, body)}
    event = http_api_event("POST", "/webhooks/chatwoot", body, headers)
status = webhook.handler(event, LambdaContext(10))["statusCode"]
assert status == 200, status
print(imported)
"""


LAMBDA_VENV = ROOT / ".chatbuffer" / "lambda-venv"


def lambda_python() -> str:
    """A Python with exactly the Lambda package's libraries (built on first use)."""
    python = LAMBDA_VENV / "bin" / "python"
    marker = LAMBDA_VENV / ".requirements"
    requirements = (ROOT / "requirements-lambda.txt").read_text()
    if not python.exists() or not marker.exists() or marker.read_text() != requirements:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LAMBDA_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(ROOT / "requirements-lambda.txt")],
                       check=True)
        marker.write_text(requirements)
    return str(python)


def sample(code: str, *args: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds spent importing, inside the process; wall seconds of the whole process)."""
    started = time.perf_counter()
    # The project's own code comes from the working tree, like the files of the Lambda zip.
    # Bytecode written by the first sample and read by the rest, whatever the caller's shell says
    # (PYTHONDONTWRITEBYTECODE would make every sample compile our modules from source).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "", **(env or {})}
    done = subprocess.run([lambda_python(), "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return float(done.stdout.strip().splitlines()[-1]), wall


async def run_async(smoke: bool) -> dict[str, Any]:
    rounds = 3 if smoke else 21
    configured = os.environ.get("BENCH_COLDSTART_CHANNELS", "all")
    channels = CHANNEL_ENV if configured == "all" else {}
    samples: dict[str, list[tuple[float, float]]] = {"floor": [], "health": [], "webhook": [], "supabase": []}
    async with database_factory() as factory:
        dsn = await factory.fresh()
        # As on Lambda: AWS_LAMBDA_FUNCTION_NAME turns on JSON logs (Powertools' formatter, at
        # import) and EMF metrics (Powertools' metrics, at the first stored message).
        env = {"DATABASE_URL": dsn, "CHATWOOT_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING",
               "AWS_LAMBDA_FUNCTION_NAME": "chatbuffer-bench-webhook", **channels}
        # Bytecode compiled once for both sides, so each sample measures imports, not compiling.
        sample(WEBHOOK, "health", env=env)
        sample(SUPABASE_IMPORT, env=env)
        for n in range(rounds):
            samples["floor"].append(await asyncio.to_thread(sample, FLOOR))
            samples["health"].append(await asyncio.to_thread(sample, WEBHOOK, "health", env=env))
            samples["supabase"].append(await asyncio.to_thread(sample, SUPABASE_IMPORT, env=env))
            samples["webhook"].append(await asyncio.to_thread(sample, WEBHOOK, "webhook", str(10_000 + n), SECRET,
                                                              env=env))
        await factory.drop(dsn)
    imports = {k: median([s[0] for s in v]) for k, v in samples.items()}
    walls = {k: median([s[1] for s in v]) for k, v in samples.items()}
    import_ratio = imports["health"] / imports["floor"]
    summary = [
        f"cold start, {rounds} fresh processes each (medians), channels configured: "
        f"{'all' if channels else 'chatwoot only'}:",
        f"  import fastapi+mangum        {imports['floor'] * 1000:6.0f} ms   whole process {walls['floor'] * 1000:6.0f} ms",
        f"  import functions.webhook     {imports['health'] * 1000:6.0f} ms   ratio {import_ratio:.2f} (target <= 1.25)",
        f"  ... with the Supabase client   {imports['supabase'] * 1000:6.0f} ms   ratio "
        f"{imports['supabase'] / imports['floor']:.2f} (imported by the first request, on Supabase)",
        f"  process to first GET /health {walls['health'] * 1000:6.0f} ms   ratio {walls['health'] / walls['floor']:.2f}",
        f"  process to first stored msg  {walls['webhook'] * 1000:6.0f} ms   ratio {walls['webhook'] / walls['floor']:.2f}"
        " (includes connecting to PostgreSQL)",
    ]
    return {"name": "coldstart", "import_s": imports, "wall_s": walls, "import_ratio": import_ratio,
            "samples": samples, "summary": summary}


def run(smoke: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(smoke))
