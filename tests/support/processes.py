"""TEST CODE: `chatbuffer serve` and other servers as subprocesses, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from tests.support.far_side import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_until_healthy(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    """Poll GET /health until 200; fail with the process's output if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout or process.stderr
            raise RuntimeError(f"server exited:\n{output.read() if output else ''}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server at {url} did not become healthy in {timeout} s")


@contextlib.contextmanager
def chatbuffer_serve(env: dict[str, str], output: list[str], timeout: float = 30) -> Iterator[str]:
    """Run `chatbuffer serve` on a free port; yields its URL. On exit: SIGINT, the process must
    end cleanly, and its output is appended to `output`."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", "serve", "--port", str(port)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process, timeout)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        text, _ = process.communicate(timeout=30)
        output.append(text)
        assert process.returncode == 0, text
