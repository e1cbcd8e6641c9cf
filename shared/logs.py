"""Logging for every entry point: level from LOG_LEVEL, one line per record.

What goes to INFO is ids, counts and timings only: message text, transcripts, phone numbers and
file names never do. HTTP client libraries log every request's URL at INFO, and an attachment's
URL ends in the customer's file name: at INFO and above they log warnings only.
"""

from __future__ import annotations

import logging
import os

URL_LOGGING_LIBRARIES = ("httpx", "httpx2", "httpcore", "openai")


def configure_logging() -> None:
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "INFO").upper())
    root = logging.getLogger()
    if not root.handlers:  # the Lambda runtime installs its own handler; keep it
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)
    for name in URL_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING if isinstance(level, int) and level >= logging.INFO
                                         else logging.NOTSET)
