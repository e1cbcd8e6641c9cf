"""CloudWatch metrics in Embedded Metric Format (EMF): JSON lines on stdout that CloudWatch Logs
turns into metrics, with no API call and no client library.

AWS Lambda Powertools would do the same, but importing its Metrics and Logger costs ~44 ms of cold
start here (docs/benchmarks.md), a quarter of the webhook's whole import; a metric line is a dict
and one `orjson.dumps`. Metrics are written on Lambda (AWS_LAMBDA_FUNCTION_NAME is set) or with
METRICS=emf; anywhere else they are only counted in memory, where tests read them.

Names (namespace `chatbuffer`, one dimension `Service`: METRICS_SERVICE, the stage's name on AWS): MessagesIngested (webhook),
BurstsAnswered, BurstsFailed, BurstsCancelled, DiscardedDrafts, ModelCalls, ReplyLateness (ms from
the burst's due time to its reply having left) and ModelLatency (ms per model call) (sweeper).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from typing import Any, TextIO

import orjson

NAMESPACE = "chatbuffer"
MILLISECONDS = "Milliseconds"
COUNT = "Count"
# EMF allows at most 100 values per metric in one line; more are summarised by their spread anyway.
MAX_VALUES = 100


def emf_enabled() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) or os.environ.get("METRICS", "").lower() == "emf"


class Metrics:
    """Counts and timings collected during an invocation, written as one EMF line by flush()."""

    def __init__(self, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self.enabled = emf_enabled() if enabled is None else enabled
        self._stream = stream
        self.counts: Counter[str] = Counter()
        self.values: dict[str, list[float]] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def observe_ms(self, name: str, milliseconds: float) -> None:
        values = self.values.setdefault(name, [])
        if len(values) < MAX_VALUES:
            values.append(round(milliseconds, 1))

    def flush(self, **properties: Any) -> dict[str, Any] | None:
        """Write what was collected (if anything) and start again; returns the record written."""
        if not self.counts and not self.values:
            return None
        record = emf_record(self.counts, self.values, properties)
        self.counts = Counter()
        self.values = {}
        if self.enabled:
            stream = self._stream or sys.stdout
            stream.write(orjson.dumps(record).decode() + "\n")
            stream.flush()
        return record


def emf_record(counts: Counter[str], values: dict[str, list[float]], properties: dict[str, Any]) -> dict[str, Any]:
    definitions = [{"Name": name, "Unit": COUNT} for name in counts]
    definitions += [{"Name": name, "Unit": MILLISECONDS} for name in values]
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Service"]], "Metrics": definitions}],
        },
        "Service": os.environ.get("METRICS_SERVICE", "chatbuffer"),
        **properties,
        **counts,
        **values,
    }
