"""Ingest: webhook throughput and latency through the real HTTP stack, against a floor.

uvicorn + chatbuffer's app (signature check, parse, one `ingest_message` call) and, in the same
run with the same load generator, uvicorn + a bare FastAPI endpoint inserting one row
(bench/floor_app.py). wrk, a C load generator, sends pre-signed unique requests so the 2-core
machine's CPU goes to the server and the database, not to the client. Rounds alternate the two
servers; medians are reported. Each measurement gets a fresh database.

Every channel is configured in chatbuffer's app; BENCH_INGEST_CHANNEL (chatwoot, whatsapp,
messenger, instagram, twilio) chooses whose signed deliveries are sent: one text message each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.common import database_factory, median, require_tool, uvicorn_server
from tests.support.pgbouncer import pgbouncer, through

from shared.channels import graph, twilio
from shared.channels.chatwoot import sign

SECRET = "bench-webhook-secret"
TWILIO_URL = "https://bench.example/webhooks/twilio"  # the public URL Twilio would sign
CHANNEL_ENV = {  # every channel on, as a deployment with all of them configured
    "META_APP_SECRET": SECRET, "WHATSAPP_VERIFY_TOKEN": "bench", "WHATSAPP_ACCESS_TOKEN": "bench",
    "META_VERIFY_TOKEN": "bench", "META_PAGE_ACCESS_TOKEN": "bench", "INSTAGRAM_ACCESS_TOKEN": "bench",
    "TWILIO_AUTH_TOKEN": SECRET, "TWILIO_ACCOUNT_SID": "ACbench", "TWILIO_WEBHOOK_URL": TWILIO_URL,
}
CHANNELS = ("chatwoot", "whatsapp", "messenger", "instagram", "twilio")
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chatwoot" / "message_created_incoming_text.json"
# chatbuffer's app: the webhook Lambda's (default), or with BENCH_INGEST_APP=serve the one
# `chatbuffer serve` builds, with the admin API, the inspector and the playground mounted.
# BENCH_INGEST_POOLER=pgbouncer puts a PgBouncer in transaction mode between chatbuffer and the
# database; =no-statement-cache keeps the direct connection with the pooler's driver setting.
APPS = {"lambda": "functions.webhook:app", "serve": "bench.serve_app:app"}
TARGETS = {"chatbuffer": APPS[os.environ.get("BENCH_INGEST_APP", "lambda")], "floor": "bench.floor_app:app"}


def write_requests(path: Path, count: int, first_id: int, conversations: int, channel: str = "chatwoot") -> None:
    """Unique, signed deliveries of one text message each, spread over `conversations` so bursts
    build up; in the request file format of bench/wrk_requests.lua."""
    template = json.loads(FIXTURE.read_text())
    timestamp = int(time.time())
    with path.open("w") as out:
        for n in range(count):
            headers, body = _delivery(channel, template, timestamp, first_id + n, 100_000 + n % conversations)
            route = "meta" if channel in ("messenger", "instagram") else channel
            out.write(f"/webhooks/{route}\n{len(headers)}\n")
            out.writelines(f"{name}: {value}\n" for name, value in headers.items())
            out.write(body.decode() + "\n")


def _delivery(channel: str, template: dict[str, Any], timestamp: int, message: int,
              conversation: int) -> tuple[dict[str, str], bytes]:
    """One signed delivery as the platform sends it (sent now: a captured time would be stale)."""
    text = f"message {message}"
    if channel == "chatwoot":
        payload = {**template, "id": message, "content": text,
                   "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp)),
                   "conversation": {**template["conversation"], "id": conversation}}
        body = _json(payload)
        return {"Content-Type": "application/json", "X-Chatwoot-Timestamp": str(timestamp),
                "X-Chatwoot-Signature": sign(SECRET, str(timestamp), body)}, body
    if channel == "twilio":
        params = [("MessageSid", f"SM{message:032d}"), ("AccountSid", "ACbench"), ("From", f"+1415{conversation:07d}"),
                  ("To", "+14155550999"), ("Body", text), ("NumMedia", "0")]
        return {"Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio.sign(SECRET, TWILIO_URL, params)}, urlencode(params).encode()
    if channel == "whatsapp":
        payload: dict[str, Any] = {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
                "contacts": [{"profile": {"name": "Bench"}, "wa_id": str(conversation)}],
                "messages": [{"from": str(conversation), "id": f"wamid.{message}", "timestamp": str(timestamp),
                              "type": "text", "text": {"body": text}}]}}]}]}
    else:  # messenger, instagram
        payload = {"object": "page" if channel == "messenger" else "instagram", "entry": [{
            "id": "106540352242922", "time": timestamp * 1000, "messaging": [{
                "sender": {"id": str(conversation)}, "recipient": {"id": "106540352242922"},
                "timestamp": timestamp * 1000, "message": {"mid": f"m_{message}", "text": text}}]}]}
    body = _json(payload)
    return {"Content-Type": "application/json", "X-Hub-Signature-256": graph.sign(SECRET, body)}, body


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(output: str) -> dict[str, Any]:
    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": latency("50%"), "p99_ms": latency("99%"),
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def run_wrk(url: str, requests_file: Path, connections: int, seconds: float) -> dict[str, Any]:
    wrk = require_tool("wrk", "apt-get install wrk (Debian's package)")
    script = Path(__file__).resolve().parent / "wrk_requests.lua"
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url, "--",
               str(requests_file)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


async def measure(factory: Any, target: str, files: dict[str, Path], connections: int, seconds: float) -> dict[str, Any]:
    dsn = await factory.fresh()
    pool_size = os.environ.get("BENCH_POOL_SIZE", "10")
    env = {"DATABASE_URL": dsn, "CHATWOOT_WEBHOOK_SECRET": SECRET, "DATABASE_POOL_SIZE": pool_size,
           "LOG_LEVEL": "WARNING", **CHANNEL_ENV}
    try:
        with contextlib.ExitStack() as stack:
            pooler = os.environ.get("BENCH_INGEST_POOLER", "")
            if target == "chatbuffer" and pooler == "no-statement-cache":
                env["DATABASE_POOLER"] = "transaction"  # the driver's setting alone, a direct connection
            if target == "chatbuffer" and pooler == "pgbouncer":
                # chatbuffer through PgBouncer in transaction mode (as through Supabase's pooler), with
                # as many server connections as its own pool; the floor keeps its direct connection.
                bouncer = stack.enter_context(pgbouncer(factory.server, pool_size=int(pool_size)))
                env |= {"DATABASE_URL": through(bouncer, dsn), "DATABASE_POOLER": "transaction"}
            url = stack.enter_context(uvicorn_server(TARGETS[target], env))
            await asyncio.to_thread(run_wrk, url, files["warmup"], connections, max(1.0, seconds / 5))
            loaded = await asyncio.to_thread(run_wrk, url, files["load"], connections, seconds)
            single = await asyncio.to_thread(run_wrk, url, files["single"], 1, max(1.0, seconds / 2))
    finally:
        await factory.drop(dsn)
    return {"loaded": loaded, "single": single}


async def run_async(smoke: bool) -> dict[str, Any]:
    rounds, seconds, connections = (1, 1, 16) if smoke else (3, 10, 64)
    per_file = 4_000 if smoke else 60_000
    channel = os.environ.get("BENCH_INGEST_CHANNEL", "chatwoot")
    if channel not in CHANNELS:
        raise SystemExit(f"BENCH_INGEST_CHANNEL={channel!r} must be one of " + ", ".join(CHANNELS))
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.txt" for name in ("warmup", "load", "single")}
        for offset, path in enumerate(files.values()):
            write_requests(path, per_file, first_id=1_000_000 * (offset + 1), conversations=2_000, channel=channel)
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "chatbuffer": []}
        async with database_factory() as factory:
            for round_number in range(rounds):
                order = ["floor", "chatbuffer"] if round_number % 2 == 0 else ["chatbuffer", "floor"]
                for target in order:
                    runs[target].append(await measure(factory, target, files, connections, seconds))
    return summarise(runs, connections, seconds, per_file, channel)


def summarise(runs: dict[str, list[dict[str, Any]]], connections: int, seconds: float, per_file: int,
              channel: str = "chatwoot") -> dict[str, Any]:
    def med(target: str, kind: str, key: str) -> float:
        return median([r[kind][key] for r in runs[target]])

    stats = {t: {"rps": med(t, "loaded", "rps"), "p50_ms": med(t, "loaded", "p50_ms"),
                 "p99_ms": med(t, "loaded", "p99_ms"), "single_p50_ms": med(t, "single", "p50_ms"),
                 "non_2xx": sum(r["loaded"]["non_2xx"] for r in runs[t])} for t in runs}
    ratio = stats["chatbuffer"]["rps"] / stats["floor"]["rps"] if stats["floor"]["rps"] else float("nan")
    wrapped = any(r["loaded"]["requests"] > per_file for rs in runs.values() for r in rs)
    summary = [
        f"ingest of {channel} deliveries (every channel configured), {connections} connections, "
        f"{seconds:g} s x {len(runs['floor'])} rounds (medians):",
        f"  floor (bare insert)  {stats['floor']['rps']:8.0f} req/s  p50 {stats['floor']['p50_ms']:.2f} ms"
        f"  p99 {stats['floor']['p99_ms']:.2f} ms  single p50 {stats['floor']['single_p50_ms']:.2f} ms",
        f"  chatbuffer ingest    {stats['chatbuffer']['rps']:8.0f} req/s  p50 {stats['chatbuffer']['p50_ms']:.2f} ms"
        f"  p99 {stats['chatbuffer']['p99_ms']:.2f} ms  single p50 {stats['chatbuffer']['single_p50_ms']:.2f} ms",
        f"  throughput ratio chatbuffer/floor: {ratio:.2f} (target >= 0.8); "
        f"single-request p50 {stats['chatbuffer']['single_p50_ms']:.2f} ms (target <= 5 ms)",
    ]
    if stats["chatbuffer"]["non_2xx"] or stats["floor"]["non_2xx"]:
        summary.append(f"  WARNING: answers other than 2xx: chatbuffer {stats['chatbuffer']['non_2xx']}, "
                       f"floor {stats['floor']['non_2xx']} (the numbers above do not measure ingest)")
    if wrapped:
        summary.append("  note: wrk replayed past the end of the request file (some requests were redeliveries)")
    return {"name": "ingest", "channel": channel, "stats": stats, "ratio": ratio, "runs": runs, "summary": summary}


def run(smoke: bool = False) -> dict[str, Any]:
    return asyncio.run(run_async(smoke))
