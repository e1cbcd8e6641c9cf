"""TEST CODE: a real headless Chromium (Debian's `chromium` package) driven by Playwright for Python.

No browser is downloaded: Playwright is pointed at the system's executable (CHROMIUM, or
/usr/bin/chromium). `.ci/run` installs the package; on a machine without it the browser tests are
skipped, except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from tests.support.packages import debian_package

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--no-first-run", "--no-default-browser-check"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def require_chromium() -> str:
    return debian_package("chromium", os.environ.get("CHROMIUM"), "/usr/bin/chromium", tested="the pages")


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=require_chromium(), args=ARGS)
        try:
            yield instance
        finally:
            instance.close()


class Page:
    """A page that records every console error or warning and uncaught exception."""

    def __init__(self, browser: Any, viewport: dict[str, int] = DESKTOP) -> None:
        self.page = browser.new_page(viewport=viewport)
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"{m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)
