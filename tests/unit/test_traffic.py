"""The policy benchmark's traffic: the two generated shapes and chat logs read from CSV."""
from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bench.policies import pairwise_same_burst
from bench.traffic import TraceError, make_traffic, read_trace, write_trace

ROOT = Path(__file__).resolve().parents[2]


def intra_turn_gaps(traffic) -> list[float]:
    return [b - a for c in traffic for a, b, same in zip(c.times, c.times[1:], pairwise_same_burst(c)) if same]


def test_the_two_shapes_differ_in_pace_not_in_turns() -> None:
    phone, desk = make_traffic(400, shape="phone"), make_traffic(400, shape="desk")
    assert [c.burst_of for c in phone] == [c.burst_of for c in desk]  # same turns, same sizes
    assert 2.5 < statistics.median(intra_turn_gaps(phone)) < 3.5
    assert 25 < statistics.median(intra_turn_gaps(desk)) < 35


def test_clarity_changes_the_text_and_never_the_times() -> None:
    noisy, clear = make_traffic(200, clarity=0.0), make_traffic(200, clarity=1.0)
    assert [c.times for c in noisy] == [c.times for c in clear]
    assert [c.texts for c in noisy] != [c.texts for c in clear]
    # With clear text, no message that more follows ends with a question mark.
    for c in clear:
        for text, same in zip(c.texts, pairwise_same_burst(c)):
            assert not (same and text.endswith("?"))


def test_a_trace_written_and_read_back_is_the_same_traffic(tmp_path: Path) -> None:
    traffic = make_traffic(50, shape="desk")
    back = read_trace(write_trace(traffic, tmp_path / "trace.csv"))
    assert [c.burst_of for c in back] == [c.burst_of for c in traffic]
    assert [c.texts for c in back] == [c.texts for c in traffic]
    assert all(b == pytest.approx(t, abs=1e-3) for cb, ct in zip(back, traffic) for b, t in zip(cb.times, ct.times))


def test_turns_are_the_customer_messages_between_agent_messages(tmp_path: Path) -> None:
    path = tmp_path / "chats.csv"
    path.write_text(
        "conversation,sender,timestamp,text\n"
        "b,customer,2026-11-24T10:00:05Z,second conversation\n"
        "a,customer,0,hola\n"
        "a,customer,3.5,tienen talla 27?\n"
        "a,agent,20,Sí, ¿qué color?\n"
        "a,customer,40,negro\n"
        "a,agent,50,Listo\n"
        "a,agent,51,¿algo más?\n", encoding="utf-8")
    by_first_text = {c.texts[0]: c for c in read_trace(path)}
    a, b = by_first_text["hola"], by_first_text["second conversation"]
    assert a.times == (0.0, 3.5, 40.0) and a.burst_of == (0, 0, 1)
    assert b.burst_of == (0,) and b.times[0] > 1.7e9


@pytest.mark.parametrize(("content", "error"), [
    ("who,sender,timestamp,text\n", "missing conversation"),
    ("conversation,sender,timestamp,text\n1,bot,0,hi\n", "line 2: sender must be customer or agent"),
    ("conversation,sender,timestamp,text\n1,customer,yesterday,hi\n", "line 2: timestamp 'yesterday'"),
])
def test_a_bad_trace_is_refused_with_its_line(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TraceError, match=error):
        read_trace(path)


def test_bench_policies_replays_a_trace_file(tmp_path: Path) -> None:
    trace = write_trace(make_traffic(30, shape="phone"), tmp_path / "shop.csv")
    done = subprocess.run([sys.executable, "-m", "bench", "policies", "--smoke", "--trace", str(trace)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "shop.csv: 30 conversations" in done.stdout
    assert "chatbuffer (adaptive)" in done.stdout and "chatbuffer (fixed 30 s, the default)" in done.stdout
