"""Logging for every entry point: level from LOG_LEVEL, one line per record.

What goes to INFO is ids, counts and timings only: message text and phone numbers never do.
"""

from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    root = logging.getLogger()
    if not root.handlers:  # the Lambda runtime installs its own handler; keep it
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level)
