"""CloudWatch metrics in Embedded Metric Format (EMF), through AWS Lambda Powertools.

EMF lines are JSON on stdout that CloudWatch Logs turns into metrics: no API call, no client.
Powertools builds and validates them (units, the 100-values cap, the directive). Its cost on the
webhook's cold start, measured beside the webhook's own imports, is ~7 ms, ratio 1.03
(docs/benchmarks.md); it is imported on the first stored message, not at import time.

Lines are written on Lambda (AWS_LAMBDA_FUNCTION_NAME is set) or with METRICS=emf; elsewhere the
values are only collected, and flush() returns them (the tests read them there).

Names (namespace `chatbuffer`, dimension `service`: METRICS_SERVICE, the stage's name on AWS):
MessagesIngested (webhook), BurstsAnswered, BurstsFailed, BurstsCancelled, DiscardedDrafts, RateLimited,
LeasesLost, ModelCalls, ReplyLateness (ms from the burst's due time to its reply having left) and
ModelLatency (ms per model call) (sweeper).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from typing import Any, TextIO

import orjson
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "chatbuffer"
MAX_VALUES = 99  # per metric and line: at its hundredth value Powertools prints a line on its own

log = logging.getLogger(__name__)


def emf_enabled() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) or os.environ.get("METRICS", "").lower() == "emf"


class Metrics:
    """Counts and timings collected during an invocation, written as one EMF line by flush().

    Values are kept here and handed to Powertools only at flush: counts summed into one value each,
    timings capped at MAX_VALUES per metric (EMF allows 100; Powertools would otherwise print a line of
    its own at the hundredth value, whether or not this instance writes any)."""

    def __init__(self, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.enabled = emf_enabled() if enabled is None else enabled
        self._stream = stream
        self._counts: Counter[str] = Counter()
        self._timings: dict[str, list[float]] = {}

    def count(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    def observe_ms(self, name: str, milliseconds: float) -> None:
        values = self._timings.setdefault(name, [])
        if len(values) < MAX_VALUES:
            values.append(round(milliseconds, 1))

    def flush(self, **properties: Any) -> dict[str, Any] | None:
        """Write what was collected (if anything) and start again; returns the record. Never raises:
        a metric must not stop a sweep."""
        if not self._counts and not self._timings:
            return None
        counts, timings = self._counts, self._timings
        self._counts, self._timings = Counter(), {}
        try:
            # Ephemeral: a metric set of its own (Powertools' Metrics shares one per process).
            emf = EphemeralMetrics(namespace=NAMESPACE, service=os.environ.get("METRICS_SERVICE", "chatbuffer"))
            for name, total in counts.items():
                emf.add_metric(name=name, unit=MetricUnit.Count, value=total)
            for name, values in timings.items():
                for value in values:
                    emf.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)
            for key, value in properties.items():
                emf.add_metadata(key=key, value=value)
            record = emf.serialize_metric_set()
            if self.enabled:
                stream = self._stream or sys.stdout
                stream.write(orjson.dumps(record).decode() + "\n")
                stream.flush()
            return record
        except Exception:
            log.warning("metrics could not be written", exc_info=True)
            return None
