"""Logging for every entry point: level from LOG_LEVEL, one line per record.

On Lambda (or with LOG_FORMAT=json) each record is one JSON object, so CloudWatch Logs Insights
can filter on its fields: time, level, logger, message, and whatever the call passed in `extra`
(buffer_id, outcome, duration_ms, ...). Elsewhere, one readable line.

What goes to INFO is ids, counts and timings only: message text, transcripts, phone numbers and
file names never do. HTTP client libraries log every request's URL at INFO, and an attachment's
URL ends in the customer's file name: at INFO and above they log warnings only.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import orjson

URL_LOGGING_LIBRARIES = ("httpx", "httpx2", "httpcore", "openai")
# Attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def json_logs() -> bool:
    wanted = os.environ.get("LOG_FORMAT", "").lower()
    return wanted == "json" or (wanted != "text" and bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")))


def configure_logging() -> None:
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "INFO").upper())
    root = logging.getLogger()
    if not root.handlers:  # the Lambda runtime installs its own handler; keep it (its formatter changes below)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if json_logs():
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    root.setLevel(level)
    for name in URL_LOGGING_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING if isinstance(level, int) and level >= logging.INFO
                                         else logging.NOTSET)
