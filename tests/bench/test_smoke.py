"""Every benchmark runs here in smoke mode, so none can rot. Smoke numbers mean nothing: these
tests check that each benchmark runs end to end and that what it measures stayed correct (nothing
lost, nothing answered twice), never a speed target."""

from __future__ import annotations

import os
import shutil

import pytest

from bench import claim, coldstart, drain, ingest, lateness, soak

pytestmark = pytest.mark.bench_smoke


def test_ingest_smoke() -> None:
    if not shutil.which("wrk") and os.environ.get("CI") != "true":
        pytest.skip("wrk is not installed (apt-get install wrk); CI installs it")
    result = ingest.run(smoke=True)
    for target in ("floor", "chatbuffer"):
        assert result["stats"][target]["rps"] > 0
        assert result["stats"][target]["non_2xx"] == 0  # every signed request was accepted
    assert result["ratio"] > 0


def test_coldstart_smoke() -> None:
    result = coldstart.run(smoke=True)
    assert result["import_s"]["floor"] > 0 and result["import_ratio"] > 0
    # Every kind of process ran and was timed (which is quicker is the full benchmark's question:
    # compared here, two medians of a few processes flake on a busy machine).
    assert set(result["wall_s"]) == {"floor", "health", "supabase", "webhook"}
    assert all(len(samples) == len(result["samples"]["floor"]) > 0 for samples in result["samples"].values())
    assert all(wall > 0 for wall in result["wall_s"].values())


def test_claim_smoke() -> None:
    result = claim.run(smoke=True)
    assert sorted(result["results"]) == [0, 1_000, 10_000]


def test_drain_smoke() -> None:
    for run in drain.run(smoke=True)["runs"]:
        assert run["completed"] == run["expected"] == run["replies"]
        assert run["duplicates"] == 0 and run["max_attempts"] == 1


def test_lateness_smoke() -> None:
    result = lateness.run(smoke=True)
    bursts = len({c for _, c, _ in lateness.traffic(2)})
    for mode, r in result["results"].items():
        assert r["replies"] == bursts, mode  # every burst answered once, in every mode
        assert r["p50_s"] >= -0.05, mode  # never before the window ended (clock jitter aside)


def test_soak_smoke() -> None:
    result = soak.run(smoke=True)
    assert result["messages_stored"] == result["messages_sent"] > 0  # nothing lost
    assert result["completed"] == result["bursts"] == result["replies"] and result["failed"] == 0
    assert result["answered_twice"] == []  # nothing doubled
    assert result["rss_mb"]["start"] > 0

