"""The inspector (/admin) and the playground (/playground) in a real headless Chromium, against
`chatbuffer serve` on a real database: no console errors, nothing loaded from elsewhere, live
countdowns, a retry click that changes a burst's state, and a playground burst answered once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import WEBHOOK_SECRET
from tests.support.browser import DESKTOP, PHONE, Page, browser, require_chromium
from tests.support.processes import chatbuffer_serve
from tests.support.sql import execute, fetch

TOKEN = "browser-test-admin-token"
WINDOW_SECONDS = 10


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    require_chromium()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "CHATWOOT", "SUPABASE"))}
    env |= {"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN, "CHATWOOT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "BUFFER_WINDOW_SECONDS": str(WINDOW_SECONDS), "BUFFER_MAX_AGE_SECONDS": "30",
            "SWEEP_INTERVAL_SECONDS": "1"}
    with chatbuffer_serve(env, output=[]) as url:
        yield url


def run(coro: Any) -> Any:
    """Run a coroutine on a private loop in another thread: Playwright's sync API owns this one's."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sql(query: str, *args: Any) -> list[dict[str, Any]]:
    return run(fetch(os.environ["_BROWSER_DSN"], query, *args))


@pytest.fixture(autouse=True)
def _dsn(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_BROWSER_DSN", database_url)


def say(url: str, conversation_id: int, text: str) -> dict[str, Any]:
    response = httpx.post(f"{url}/playground/api/messages", json={"conversation_id": conversation_id, "text": text})
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(check: Any, timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def moves(countdown: Any) -> None:
    """The countdown's text changes within a few seconds (once a second when the machine is idle;
    a busy CI machine may delay a tick, or a poll may correct the clock offset by a second)."""
    first = countdown.inner_text()
    wait_for(lambda: countdown.inner_text() != first, timeout=5, what=f"the countdown to move from {first!r}")


def assert_clean(page: Page, url: str) -> None:
    assert page.problems == [], page.problems
    foreign = [r for r in page.requests if not r.startswith((url, "data:"))]
    assert foreign == [], foreign  # nothing from a CDN: the pages work offline


def fits(page: Page, width: int) -> None:
    scroll_width = page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"the page scrolls sideways at {width} px: {scroll_width} px wide"


def test_inspector_counts_down_and_retries_a_failed_burst(server: str) -> None:
    say(server, 11, "Hola")
    say(server, 11, "¿tienen talla 27?")
    failed = say(server, 12, "¿y el envío?")["buffer_id"]
    run(execute(os.environ["_BROWSER_DSN"],
                        "update public.message_buffer set status = 'failed', attempts = 5, last_error ="
                        " 'HTTPStatusError: 502 Bad Gateway' where id = $1", failed))
    with browser() as chromium:
        page = Page(chromium, DESKTOP)
        page.goto(f"{server}/admin#token={TOKEN}")
        waiting = page.locator("[data-state='active'] .countdown").first
        waiting.wait_for(timeout=10_000)
        moves(waiting)
        assert page.evaluate("location.hash") == ""  # the token left the address bar
        assert page.locator("#stats").inner_text().strip()

        row = page.locator(f"[data-burst-id='{failed}']").first
        row.locator(".retry").click()
        wait_for(lambda: sql("select status from public.message_buffer where id = $1", failed)[0]["status"]
                 == "completed", what="the retried burst to be answered")
        page.locator(f"[data-burst-id='{failed}'][data-state='completed']").first.wait_for(timeout=10_000)
        assert page.locator(f"[data-burst-id='{failed}'][data-state='failed']").count() == 0
        actions = sql("select actor, via, action, outcome from public.admin_actions")
        assert [(a["via"], a["action"], a["outcome"]) for a in actions] == [("api", "retry", "retried")]
        assert_clean(page, server)

        phone = Page(chromium, PHONE)
        phone.goto(f"{server}/admin#token={TOKEN}")
        phone.locator("[data-burst-id]").first.wait_for(timeout=10_000)
        fits(phone, PHONE["width"])
        assert_clean(phone, server)


def test_inspector_asks_for_the_token_and_refuses_a_wrong_one(server: str) -> None:
    with browser() as chromium:
        page = Page(chromium, DESKTOP)
        page.goto(f"{server}/admin")
        form = page.locator("#signin")
        form.wait_for(timeout=10_000)
        form.locator("input[type='password']").fill("wrong")
        form.locator("input[type='password']").press("Enter")
        page.get_by_text("Wrong token").first.wait_for(timeout=10_000)
        form.locator("input[type='password']").fill(TOKEN)
        form.locator("input[type='password']").press("Enter")
        page.locator("#stats").wait_for(timeout=10_000)
        # A 401 is the expected answer to the wrong token; nothing else may complain.
        problems = [p for p in page.problems if "401" not in p]
        assert problems == [], problems


def test_playground_burst_gets_exactly_one_reply(server: str) -> None:
    with browser() as chromium:
        page = Page(chromium, PHONE)
        page.goto(f"{server}/playground")
        composer = page.locator("#composer")
        for text in ("Hola", "¿tienen estos tenis?", "en talla 27"):
            composer.fill(text)
            composer.press("Enter")
        countdown = page.locator("#burst-status .countdown")
        countdown.wait_for(timeout=5_000)
        moves(countdown)
        assert page.locator(".bubble[data-author='customer']").count() == 3

        bot = page.locator(".bubble[data-author='bot']")
        bot.first.wait_for(timeout=(WINDOW_SECONDS + 10) * 1000)
        time.sleep(2.5)  # long enough for a second reply to show, if there were one
        assert bot.count() == 1
        reply = bot.first.inner_text()
        assert "no OPENAI_API_KEY" in reply and "received 3 message(s)" in reply
        assert page.locator(".bubble[data-author='customer']").count() == 3  # no duplicate after reconciling
        fits(page, PHONE["width"])
        assert_clean(page, server)

    bursts = sql("select status, message_count from public.message_buffer")
    assert bursts == [{"status": "completed", "message_count": 3}]
