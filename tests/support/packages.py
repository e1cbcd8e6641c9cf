"""TEST CODE: Debian packages some tests drive for real (chromium, pgbouncer). `.ci/run` installs
them; on a machine without one, its tests are skipped, except under CI, where it is a failure."""

from __future__ import annotations

import os
import shutil

import pytest


def debian_package(package: str, *paths: str | None, tested: str) -> str:
    """The first of `paths` (or `package` on PATH) that exists; else skip, or fail under CI."""
    for candidate in (*paths, shutil.which(package)):
        if candidate and os.path.exists(candidate):
            return candidate
    if os.environ.get("CI"):
        pytest.fail(f"CI must test {tested} for real: apt-get install {package} (.ci/run does)")
    pytest.skip(f"no {package} here (apt-get install {package}); {tested} is tested in CI")
