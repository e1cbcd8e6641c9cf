"""CloudWatch metrics (Embedded Metric Format lines) and JSON logs, as the Lambdas write them."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest

from shared.logs import configure_logging
from shared.metrics import Metrics
from tests.conftest import incoming
from tests.support.far_side import FarSide
from tests.support.sql import make_due
from tests.support.webhook import Bot


def emf_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def metric_names(record: dict[str, Any]) -> dict[str, str]:
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "chatbuffer" and directive["Dimensions"] == [["service"]]
    return {m["Name"]: m["Unit"] for m in directive["Metrics"]}


@pytest.fixture
def emf(bot: Bot, monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    monkeypatch.setenv("METRICS_SERVICE", "chatbuffer-test")
    stream = io.StringIO()
    bot.runtime.__dict__["metrics"] = Metrics(enabled=True, stream=stream)
    return stream


async def test_webhook_and_sweeper_write_emf_metrics(bot: Bot, emf: io.StringIO, far_side: FarSide,
                                                     database_url: str) -> None:
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    assert await bot.status_of(incoming(2, "¿hay envíos?")) == "buffered"
    assert await bot.status_of(incoming(2, "¿hay envíos?")) == "duplicate"  # not counted twice
    webhook_lines = emf_lines(emf)
    assert [line["MessagesIngested"] for line in webhook_lines] == [[1], [1]]
    assert all(line["Function"] == "webhook" and line["service"] == "chatbuffer-test" for line in webhook_lines)
    assert metric_names(webhook_lines[0]) == {"MessagesIngested": "Count"}
    assert "Hola" not in emf.getvalue()  # ids and counts only

    far_side.fail_replies = 1
    await make_due(database_url)
    assert await bot.sweep() == {"retry": 1}
    await make_due(database_url)
    assert await bot.sweep() == {"completed": 1}
    first, second = emf_lines(emf)[2:]
    assert first["ModelCalls"] == [1] and "BurstsAnswered" not in first
    assert second["BurstsAnswered"] == [1] and "ModelCalls" not in second  # the retry reused the draft
    assert metric_names(second)["ReplyLateness"] == "Milliseconds"
    assert len(second["ReplyLateness"]) == 1 and 0 <= second["ReplyLateness"][0] < 30_000
    assert metric_names(first)["ModelLatency"] == "Milliseconds"


async def test_failed_cancelled_and_discarded_are_counted(bot: Bot, emf: io.StringIO, far_side: FarSide,
                                                          database_url: str) -> None:
    far_side.fail_replies = 3  # max_attempts is 3 in the test settings
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    for _ in range(3):
        await make_due(database_url)
        await bot.sweep()
    counts: dict[str, int] = {}
    for line in emf_lines(emf):
        for name in ("BurstsFailed", "BurstsAnswered", "ModelCalls"):
            counts[name] = counts.get(name, 0) + int(sum(line.get(name, [])))
    assert counts == {"BurstsFailed": 1, "BurstsAnswered": 0, "ModelCalls": 1}


def test_json_log_lines_carry_the_fields_passed_in_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    stream = io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    monkeypatch.setattr(root, "handlers", [handler])
    configure_logging()
    logging.getLogger("shared.processing").info("buffer %s completed", 7, extra={"buffer_id": 7, "duration_ms": 120})
    line = json.loads(stream.getvalue())
    assert line["level"] == "INFO" and line["message"] == "buffer 7 completed"
    assert line["buffer_id"] == 7 and line["duration_ms"] == 120 and line["timestamp"]


def test_a_long_outage_is_one_line_with_a_total_not_a_crash() -> None:
    """Powertools prints a line by itself at a metric's hundredth value: counts are summed first,
    and timings capped, so a sweep counting hundreds of failures writes one line and goes on."""
    stream = io.StringIO()
    metrics = Metrics(enabled=True, stream=stream)
    for n in range(250):
        metrics.count("BurstsFailed")
        metrics.observe_ms("ReplyLateness", n)
    record = metrics.flush(Function="sweeper")
    assert record is not None and record["BurstsFailed"] == [250]
    assert len(record["ReplyLateness"]) == 99
    assert len(stream.getvalue().splitlines()) == 1
    assert metrics.flush() is None  # nothing new: nothing written
