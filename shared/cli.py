"""`chatbuffer` command: migrate, serve, sweep.

With no DATABASE_URL, every command uses the embedded PostgreSQL in .chatbuffer/pgdata (migrated
on start), so `chatbuffer serve` works on a fresh machine with nothing else installed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys

from shared.config import ConfigError, Settings
from shared.logs import configure_logging

log = logging.getLogger("chatbuffer")


def _settings_with_database() -> Settings:
    settings = Settings.from_env()
    if settings.database_url:
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

    settings = _settings_with_database()
    app = create_app(Runtime(settings), run_sweeper=not args.no_sweeper)
    where = "with an in-process sweeper" if not args.no_sweeper else "WITHOUT a sweeper"
    log.info("serving on http://%s:%d %s; webhook: POST /webhooks/chatwoot", args.host, args.port, where)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
