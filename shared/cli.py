"""`chatbuffer` command: migrate, serve, sweep, status, retry, flush.

With no DATABASE_URL, every command uses the embedded PostgreSQL in .chatbuffer/pgdata (migrated
on start), so `chatbuffer serve` works on a fresh machine with nothing else installed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import secrets
import sys

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from shared.config import ConfigError, Settings
from shared.db.errors import StoreError
from shared.logs import configure_logging

if TYPE_CHECKING:
    from shared.db.admin import AdminStore

log = logging.getLogger("chatbuffer")


def _settings_with_database() -> Settings:
    settings = Settings.from_env()
    if settings.database_url or settings.uses_supabase:
        return settings
    from shared.embedded import start_embedded_postgres
    from shared.migrate import migrate

    dsn = start_embedded_postgres()
    applied = asyncio.run(migrate(dsn))
    log.info("no DATABASE_URL: using the embedded PostgreSQL (%d migration(s) applied now)", len(applied))
    return dataclasses.replace(settings, database_url=dsn)


def cmd_migrate(args: argparse.Namespace) -> int:
    from shared.migrate import migrate

    settings = Settings.from_env()
    if settings.database_url and settings.database_pooler == "transaction":
        # DDL, and the session lock that keeps two deploys from migrating at once, need a session.
        raise ConfigError("migrations need a session: run `chatbuffer migrate` with DATABASE_URL set to the "
                          "direct connection (or the session pooler, port 5432), not the transaction pooler")
    if settings.database_url:
        applied = asyncio.run(migrate(settings.database_url))
    else:
        settings = _settings_with_database()
        applied = []
    print(f"migrations applied: {', '.join(applied) or 'none pending'}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shared.runtime import Runtime
    from shared.web.app import create_app

    embedded = not (Settings.from_env().database_url or Settings.from_env().uses_supabase)
    settings = _settings_with_database()
    generated_token = not settings.admin_token
    if generated_token:  # the inspector works out of the box; this token lives as long as the process
        settings = dataclasses.replace(settings, admin_token=secrets.token_urlsafe(18))
    console_outbox = not (settings.chatwoot_base_url and settings.chatwoot_api_token)
    app = create_app(Runtime(settings), run_sweeper=not args.no_sweeper, admin=True, playground=console_outbox)
    print(serve_banner(settings, f"http://{args.host}:{args.port}", sweeper=not args.no_sweeper, embedded=embedded,
                       playground=console_outbox, generated_token=generated_token), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def serve_banner(settings: Settings, url: str, *, sweeper: bool, embedded: bool, playground: bool,
                 generated_token: bool) -> str:
    """What a newcomer needs on the first screen: the addresses, the mode, and what to fix."""
    token = f"#token={settings.admin_token}" if generated_token else "  (bearer: your ADMIN_TOKEN)"
    lines = ["", "chatbuffer is running", ""]
    if playground:
        lines.append(f"  playground   {url}/playground      <- open this: chat as a customer")
    lines += [f"  inspector    {url}/admin{token}",
              f"  webhook      POST {url}/webhooks/chatwoot", ""]
    lines.append("  database     " + ("embedded PostgreSQL (no DATABASE_URL)" if embedded else _where(settings)))
    lines.append("  model        " + (settings.openai_model if settings.openai_api_key
                                      else "offline placeholder (set OPENAI_API_KEY for real replies)"))
    lines.append("  replies      " + ("this console (no CHATWOOT_BASE_URL/CHATWOOT_API_TOKEN)" if playground
                                      else f"Chatwoot at {settings.chatwoot_base_url}"))
    lines.append("  sweeper      " + ("in this process" if sweeper else "OFF (--no-sweeper): the fallback answers"))
    t = settings.timing
    quiet = (f"{t.buffer_window_seconds:g} s of quiet" if t.buffer_policy == "fixed"
             else f"adaptive: a share of {t.buffer_window_seconds:g} s of quiet by what the message says")
    lines.append(f"  window       {quiet}, at most {t.buffer_max_age_seconds:g} s "
                 f"or {t.buffer_max_messages} messages per burst (BUFFER_POLICY={t.buffer_policy})")
    warnings = serve_warnings(settings)
    if warnings:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _where(settings: Settings) -> str:
    if settings.uses_supabase:
        return f"Supabase Data API at {settings.supabase_url}"
    from urllib.parse import urlsplit

    parts = urlsplit(settings.database_url or "")
    return f"PostgreSQL at {parts.hostname or 'local socket'}:{parts.port or 5432}{parts.path}"  # no password


def serve_warnings(settings: Settings) -> list[str]:
    warnings = []
    if not (settings.chatwoot_webhook_secret or settings.chatwoot_webhook_token):
        warnings.append("the webhook is unauthenticated: set CHATWOOT_WEBHOOK_SECRET before exposing this port")
    if not settings.openai_api_key:
        warnings.append("OPENAI_API_KEY is not set: replies come from the OFFLINE PLACEHOLDER, not a model")
    return warnings


def cmd_sweep(args: argparse.Namespace) -> int:
    from shared.runtime import Runtime

    async def once() -> dict[str, int]:
        runtime = Runtime(_settings_with_database())
        try:
            return dict(await runtime.new_sweeper().run_once())
        finally:
            await runtime.close()

    if not args.once:
        print("only `chatbuffer sweep --once` is supported: use `serve` or the Lambda sweeper for a loop",
              file=sys.stderr)
        return 2
    outcomes = asyncio.run(once())
    print(f"sweep done: {outcomes or 'nothing due'}")
    return 0 if not outcomes.get("crashed") else 1


def _with_admin(work: Callable[[AdminStore], Awaitable[int]]) -> int:
    """Run `work` against the configured database (or the embedded one), then close it."""
    from shared.runtime import Runtime

    async def run() -> int:
        runtime = Runtime(_settings_with_database())
        try:
            return await work(runtime.admin)
        finally:
            await runtime.close()

    return asyncio.run(run())


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name (a container): still an audit entry
        return "cli"


def cmd_status(args: argparse.Namespace) -> int:
    async def work(admin: AdminStore) -> int:
        stats = await admin.stats()
        failed = await admin.list_bursts(state="failed", limit=args.failed)
        if args.json:
            print(json.dumps({"stats": stats, "failed": failed}, indent=2, default=str))
        else:
            print(format_status(stats, failed))
        return 0

    return _with_admin(work)


def format_status(stats: dict[str, Any], failed: list[dict[str, Any]]) -> str:
    """The stats as a small table per channel, then the failed bursts with their errors."""
    columns = [("waiting", "waiting"), ("due_now", "due now"), ("processing", "processing"),
               ("retrying", "retrying"), ("failed", "failed"), ("failed_24h", "failed 24h"),
               ("completed", "answered 1h"), ("cancelled", "cancelled 1h"), ("model_calls", "model calls 1h"),
               ("discarded_drafts", "discarded drafts 1h")]
    rows = [("all channels", stats.get("totals") or {})] + [(c["channel"], c) for c in stats.get("channels", [])]
    width = max(len(name) for name, _ in rows) + 2
    lines = [" " * width + "  ".join(f"{title:>{max(len(title), 4)}}" for _, title in columns)]
    for name, values in rows:
        lines.append(f"{name:<{width}}" + "  ".join(f"{values.get(key) or 0:>{max(len(title), 4)}}"
                                                 for key, title in columns))
    totals = stats.get("totals") or {}
    oldest, p50, p95 = (totals.get(k) for k in ("oldest_waiting_seconds", "lateness_p50_seconds",
                                                 "lateness_p95_seconds"))
    lines.append("")
    lines.append("oldest waiting burst: " + (f"{oldest:.0f} s" if oldest is not None else "none waiting"))
    lines.append("reply lateness, last hour: " + (f"p50 {p50:.2f} s, p95 {p95:.2f} s" if p50 is not None
                                                  else "no replies in the last hour"))
    lines.append(f"bots paused in {stats.get('paused_conversations', 0)} conversation(s); "
                 f"{stats.get('dead_letters_24h', 0)} unreadable webhook(s) in 24 h")
    if (stats.get("settings") or {}).get("error"):
        lines.append(f"SETTINGS PROBLEM: {stats['settings']['error']}")
    lines.append("")
    if not failed:
        lines.append("no failed bursts")
    for burst in failed:
        lines.append(f"FAILED burst {burst['id']}  {burst['channel']} {burst['account_id']}/{burst['conversation_id']}"
                     f"  {burst['message_count']} message(s), {burst['attempts']} attempt(s)")
        lines.append(f"    {burst['last_error']}")
        lines.append(f"    retry: chatbuffer retry {burst['id']}")
    return "\n".join(lines)


def cmd_retry(args: argparse.Namespace) -> int:
    async def work(admin: AdminStore) -> int:
        result = await admin.retry(args.burst_id, _actor(), "cli")
        messages = {
            "retried": f"burst {args.burst_id} retried: due now; a running sweeper answers it "
                       "(or run `chatbuffer sweep --once`)",
            "not_failed": f"burst {args.burst_id} is not failed (it is {result['status']}): nothing to retry",
            "unknown": f"no burst {args.burst_id}",
        }
        print(messages[result["outcome"]])
        return 0 if result["outcome"] == "retried" else 1

    return _with_admin(work)


def cmd_flush(args: argparse.Namespace) -> int:
    async def work(admin: AdminStore) -> int:
        result = await admin.answer_now(args.channel, args.account_id, args.conversation_id, _actor(), "cli")
        if result["outcome"] == "nothing_waiting":
            print(f"nothing waits in {args.channel} {args.account_id}/{args.conversation_id}")
            return 1
        print(f"burst {result['buffer_id']} is due now; a running sweeper answers it (or run `chatbuffer sweep --once`)")
        return 0

    return _with_admin(work)


def _positive(value: str) -> int:
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="chatbuffer", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply supabase/migrations to the database").set_defaults(run=cmd_migrate)
    serve = commands.add_parser("serve", help="run the webhook app with an in-process sweeper")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-sweeper", action="store_true", help="no sweep loop (to try the fallback)")
    serve.set_defaults(run=cmd_serve)
    sweep = commands.add_parser("sweep", help="claim and answer due buffers")
    sweep.add_argument("--once", action="store_true", help="one pass, then exit (for cron)")
    sweep.set_defaults(run=cmd_sweep)
    status = commands.add_parser("status", help="the stats, and the failed bursts with their errors")
    status.add_argument("--failed", type=_positive, default=20, help="how many failed bursts to list (default 20)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)
    retry = commands.add_parser("retry", help="retry a failed burst (recorded in admin_actions)")
    retry.add_argument("burst_id", type=int)
    retry.set_defaults(run=cmd_retry)
    flush = commands.add_parser("flush", help="answer a conversation's waiting burst now")
    flush.add_argument("channel", help="e.g. chatwoot")
    flush.add_argument("account_id")
    flush.add_argument("conversation_id")
    flush.set_defaults(run=cmd_flush)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
