"""CloudWatch metrics in Embedded Metric Format (EMF), through AWS Lambda Powertools.

EMF lines are JSON on stdout that CloudWatch Logs turns into metrics: no API call, no client.
Powertools builds and validates them (units, the 100-values cap, the directive). Its cost on the
webhook's cold start, measured beside the webhook's own imports, is ~7 ms, ratio 1.03
(docs/benchmarks.md); it is imported on the first stored message, not at import time.

Lines are written on Lambda (AWS_LAMBDA_FUNCTION_NAME is set) or with METRICS=emf; elsewhere the
values are only collected, and flush() returns them (the tests read them there).

Names (namespace `chatbuffer`, dimension `service`: METRICS_SERVICE, the stage's name on AWS):
MessagesIngested (webhook), BurstsAnswered, BurstsFailed, BurstsCancelled, DiscardedDrafts,
LeasesLost, ModelCalls, ReplyLateness (ms from the burst's due time to its reply having left) and
ModelLatency (ms per model call) (sweeper).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import orjson
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "chatbuffer"


def emf_enabled() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) or os.environ.get("METRICS", "").lower() == "emf"


class Metrics:
    """Counts and timings collected during an invocation, written as one EMF line by flush()."""

    def __init__(self, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.enabled = emf_enabled() if enabled is None else enabled
        self._stream = stream
        # Ephemeral: this instance's own metric set (Powertools' Metrics shares one per process).
        self._emf = EphemeralMetrics(namespace=NAMESPACE, service=os.environ.get("METRICS_SERVICE", "chatbuffer"))
        self._empty = True

    def count(self, name: str, n: int = 1) -> None:
        self._emf.add_metric(name=name, unit=MetricUnit.Count, value=n)
        self._empty = False

    def observe_ms(self, name: str, milliseconds: float) -> None:
        self._emf.add_metric(name=name, unit=MetricUnit.Milliseconds, value=round(milliseconds, 1))
        self._empty = False

    def flush(self, **properties: Any) -> dict[str, Any] | None:
        """Write what was collected (if anything) and start again; returns the record."""
        if self._empty:
            return None
        for key, value in properties.items():
            self._emf.add_metadata(key=key, value=value)
        record = self._emf.serialize_metric_set()
        self._emf.clear_metrics()
        self._emf.metadata_set.clear()
        self._empty = True
        if self.enabled:
            stream = self._stream or sys.stdout
            stream.write(orjson.dumps(record).decode() + "\n")
            stream.flush()
        return record
