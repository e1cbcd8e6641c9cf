"""Logging for every entry point: level from LOG_LEVEL, one line per record.

On Lambda (or with LOG_FORMAT=json) each record is one JSON object (AWS Lambda Powertools'
formatter), so CloudWatch Logs Insights can filter on its fields: timestamp, level, location,
message, service, and whatever the call passed in `extra` (buffer_id, outcome, duration_ms, ...).
Elsewhere, one readable line.

What goes to INFO is ids, counts and timings only: message text, transcripts, phone numbers and
file names never do, at any level. HTTP client libraries log every request's URL at INFO (an
attachment's URL ends in the customer's file name) and the OpenAI SDK whole requests at DEBUG: they
log warnings only, whatever LOG_LEVEL says.
"""

from __future__ import annotations

import logging
import os

URL_LOGGING_LIBRARIES = ("httpx", "httpx2", "httpcore", "httpcore2", "openai")


def json_logs() -> bool:
    wanted = os.environ.get("LOG_FORMAT", "").lower()
    return wanted == "json" or (wanted != "text" and bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")))


def configure_logging() -> None:
    level = logging.getLevelName(os.environ.get("LOG_LEVEL", "INFO").upper())
    root = logging.getLogger()
    if not root.handlers:  # the Lambda runtime installs its own handler; keep it (its formatter changes below)
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if json_logs():
        # Powertools' formatter: one JSON object per record, `extra` fields included, and the
        # Lambda request and X-Ray trace ids when there are.
        from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

        formatter = LambdaPowertoolsFormatter(service=os.environ.get("METRICS_SERVICE", "chatbuffer"))
        for handler in root.handlers:
            handler.setFormatter(formatter)
    root.setLevel(level)
    for name in URL_LOGGING_LIBRARIES:  # at every level: at DEBUG the OpenAI SDK logs whole requests
        logging.getLogger(name).setLevel(max(logging.WARNING, level if isinstance(level, int) else 0))
