"""Refresh the README's screenshots (docs/img/): the inspector and the playground, desktop and phone.

    .venv/bin/python -m tests.support.screenshots      # needs Debian's chromium; DATABASE_URL optional

Starts `chatbuffer serve` on a scratch database with a few conversations in every state (waiting,
being answered, failed, answered), then photographs the pages in headless Chromium.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from tests.support.browser import DESKTOP, PHONE, Page, browser
from tests.support.processes import ROOT, chatbuffer_serve

OUT = ROOT / "docs" / "img"
TOKEN = "screenshot-token"


def say(url: str, conversation_id: int, *texts: str) -> int:
    burst = 0
    for text in texts:
        response = httpx.post(f"{url}/playground/api/messages", json={"conversation_id": conversation_id, "text": text})
        response.raise_for_status()
        burst = response.json()["buffer_id"]
    return burst


async def sql(dsn: str, query: str, *args: object) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


def scratch_database() -> str:
    """A fresh database on DATABASE_URL's server, or the embedded PostgreSQL in a temporary folder."""
    server = os.environ.get("DATABASE_URL")
    if not server:
        from shared.embedded import start_embedded_postgres

        server = start_embedded_postgres(Path(tempfile.mkdtemp()) / "pgdata")
    name = f"chatbuffer_screens_{int(time.time())}"

    async def create() -> None:
        await sql(server, f'create database "{name}"')

    asyncio.run(create())
    from tests.support.database import with_database
    from shared.migrate import migrate

    dsn = with_database(server, name)
    asyncio.run(migrate(dsn))
    return dsn


def stage(url: str, dsn: str) -> None:
    """Conversations in every state the inspector shows."""
    answered = say(url, 4101, "Hola", "¿hacen envíos a Monterrey?")
    say(url, 4102, "Buenas tardes")
    asyncio.run(sql(dsn, "update public.message_buffer set due_at = now() where status = 'active'"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = httpx.get(f"{url}/playground/api/conversations/4101").json()["bursts"]
        if done and done[-1]["status"] == "completed":
            break
        time.sleep(0.3)
    failed = say(url, 4103, "¿Me pueden facturar el pedido 8812?")
    asyncio.run(sql(dsn, "update public.message_buffer set status = 'failed', attempts = 5, model_calls = 1,"
                         " last_error = 'HTTPStatusError: Server error ''502 Bad Gateway'' for url"
                         " ''https://chat.example.com/api/v1/accounts/1/conversations/4103/messages''',"
                         " attempt_errors = jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(),"
                         " 'error', 'HTTPStatusError: 502 Bad Gateway')) where id = $1", failed))
    say(url, 4104, "Hola", "¿tienen estos tenis?", "en talla 27?")
    say(url, 4105, "Quiero cambiar la dirección de entrega")
    del answered


def answer_newest_waiting_burst(url: str) -> None:
    """The playground's burst, answered now through the admin API (the window is long on purpose)."""
    auth = {"authorization": f"Bearer {TOKEN}", "x-admin-actor": "screenshots"}
    (newest,) = httpx.get(f"{url}/admin/api/bursts", params={"state": "active", "limit": 1}, headers=auth).json()["bursts"]
    path = f"{url}/admin/api/conversations/{newest['channel']}/{newest['account_id']}/{newest['conversation_id']}"
    httpx.post(f"{path}/answer-now", headers=auth).raise_for_status()


def photograph(url: str, chromium: object, label: str, viewport: dict[str, int]) -> None:
    page = Page(chromium, viewport)
    page.goto(f"{url}/admin#token={TOKEN}")
    page.locator("[data-burst-id]").first.wait_for(timeout=10_000)
    page.wait_for_timeout(1200)
    page.screenshot(path=str(OUT / f"admin-{label}.png"), full_page=label == "desktop")
    assert not page.problems, page.problems

    page = Page(chromium, viewport)
    page.goto(f"{url}/playground")
    page.evaluate("localStorage.clear()")
    page.goto(f"{url}/playground")
    composer = page.locator("#composer")
    for text in ("Hola!", "¿tienen estos tenis en azul?", "en talla 27"):
        composer.fill(text)
        composer.press("Enter")
    page.locator("#burst-status .countdown").wait_for(timeout=5_000)
    page.wait_for_timeout(600)
    answer_newest_waiting_burst(url)
    page.locator(".bubble[data-author='bot']").first.wait_for(timeout=15_000)
    for text in ("perfecto", "¿y cuánto tarda el envío a Monterrey?"):
        composer.fill(text)
        composer.press("Enter")
    page.locator("#burst-status .countdown").wait_for(timeout=5_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(OUT / f"playground-{label}.png"))
    assert not page.problems, page.problems


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    dsn = scratch_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "CHATWOOT", "SUPABASE"))}
    env |= {"DATABASE_URL": dsn, "ADMIN_TOKEN": TOKEN, "BUFFER_WINDOW_SECONDS": "45",
            "BUFFER_MAX_AGE_SECONDS": "240", "SWEEP_INTERVAL_SECONDS": "1"}
    with chatbuffer_serve(env, output=[]) as url:
        stage(url, dsn)
        with browser() as chromium:  # Playwright's sync API owns the thread's event loop from here
            for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
                photograph(url, chromium, label, viewport)
    print("\n".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*-*.png"))))


if __name__ == "__main__":
    main()
