from __future__ import annotations

import json
import math
import time

import pytest

from bench.policies import (
    ADAPTIVE, CHATBUFFER, GENERATION_S, POLICIES, Call, Tally, fenced_sliding_window, fixed_windows,
    flush_on_arrival, run, score_conversation, sliding_window,
)
from bench.traffic import Conversation, make_traffic


def answered_groups(calls: list[Call]) -> list[tuple[float, list[int]]]:
    return [(call.fires_at, sorted(call.messages)) for call in calls if not call.discarded]


def discarded_groups(calls: list[Call]) -> list[tuple[float, list[int]]]:
    return [(call.fires_at, sorted(call.messages)) for call in calls if call.discarded]


# --- sliding-window debounce -----------------------------------------------------------------

def test_debounce_merges_messages_closer_than_the_window() -> None:
    calls = sliding_window([0.0, 3.0, 6.0], window_s=4.0)
    assert answered_groups(calls) == [(10.0, [0, 1, 2])]


def test_debounce_splits_at_a_gap_longer_than_the_window() -> None:
    calls = sliding_window([0.0, 3.0, 8.0], window_s=4.0)
    assert answered_groups(calls) == [(7.0, [0, 1]), (12.0, [2])]


def test_a_message_arriving_exactly_at_the_due_time_opens_a_new_buffer() -> None:
    # The project's ingest only joins a buffer whose due time is still ahead.
    calls = sliding_window([0.0, 30.0], window_s=30.0, max_age_s=300.0)
    assert answered_groups(calls) == [(30.0, [0]), (60.0, [1])]


def test_cap_fires_at_first_plus_max_age_while_messages_keep_coming() -> None:
    times = [20.0 * i for i in range(20)]  # 0 .. 380 s, never quiet for 30 s
    calls = sliding_window(times, window_s=30.0, max_age_s=300.0)
    first = calls[0]
    assert first.fires_at == 300.0
    assert sorted(first.messages) == [i for i, t in enumerate(times) if t < 300.0]
    # The next message after the cap opens a new buffer, which then closes by its quiet window.
    assert answered_groups(calls[1:]) == [(380.0 + 30.0, [15, 16, 17, 18, 19])]


def test_count_cap_fires_at_once_on_the_fiftieth_message() -> None:
    times = [float(i) for i in range(52)]
    calls = sliding_window(times, window_s=30.0, max_age_s=300.0, max_messages=50)
    assert answered_groups(calls) == [(49.0, list(range(50))), (51.0 + 30.0, [50, 51])]


def test_chatbuffer_policy_uses_the_project_defaults() -> None:
    def chatbuffer(times: list[float]) -> list[Call]:
        return POLICIES[CHATBUFFER](Conversation(tuple(times), (0,) * len(times)))

    assert answered_groups(chatbuffer([0.0, 29.0, 58.0])) == [(88.0, [0, 1, 2])]
    assert answered_groups(chatbuffer([0.0, 40.0])) == [(30.0, [0]), (70.0, [1])]
    assert chatbuffer([float(i) for i in range(50)])[0].fires_at == 49.0


# --- chatbuffer's fence ------------------------------------------------------------------------

def test_a_message_while_the_reply_is_written_discards_the_draft_and_joins() -> None:
    # Due at 30; the reply would leave at 34; the customer writes at 31.
    calls = fenced_sliding_window([0.0, 31.0], window_s=30.0, max_age_s=300.0, max_messages=50)
    assert discarded_groups(calls) == [(30.0, [0])]
    assert answered_groups(calls) == [(61.0, [0, 1])]  # one reply, after the new quiet window


def test_a_merged_burst_already_due_is_answered_at_the_fence() -> None:
    calls = fenced_sliding_window([0.0, 31.0], window_s=1.0, max_age_s=300.0, max_messages=50,
                                  generation_s=40.0)
    assert answered_groups(calls) == [(41.0, [0, 1])]  # the merged window ended before the fence


def test_past_max_age_the_draft_is_sent_and_the_new_message_waits_its_turn() -> None:
    times = [0.0, 20.0, 40.0, 60.0, 80.0, 98.0]  # never quiet for 30 s; cap at 100 s
    calls = fenced_sliding_window(times, window_s=30.0, max_age_s=100.0, max_messages=50, generation_s=4.0)
    assert discarded_groups(calls) == []
    # Due at 100 (max age), sent at 104; the next burst waits for it, then its own window.
    assert answered_groups(calls) == [(100.0, [0, 1, 2, 3, 4, 5])]
    calls = fenced_sliding_window([*times, 101.0], window_s=30.0, max_age_s=100.0, max_messages=50,
                                  generation_s=4.0)
    assert answered_groups(calls) == [(100.0, [0, 1, 2, 3, 4, 5]), (131.0, [6])]


def test_a_merge_never_passes_the_max_count() -> None:
    calls = fenced_sliding_window([0.0, 1.0, 2.0], window_s=30.0, max_age_s=300.0, max_messages=2)
    assert discarded_groups(calls) == [] and answered_groups(calls) == [(1.0, [0, 1]), (32.0, [2])]


def test_discarded_drafts_count_as_calls_and_stale_replies_are_counted() -> None:
    conversation = Conversation(times=(0.0, 31.0), burst_of=(0, 0))
    fenced, plain = Tally(), Tally()
    score_conversation(conversation, POLICIES[CHATBUFFER](conversation), fenced)
    score_conversation(conversation, sliding_window(conversation.times, 30.0, 300.0), plain)
    assert (fenced.calls, fenced.drafts_discarded, fenced.stale_replies, fenced.bursts_exact) == (2, 1, 0, 1)
    assert (plain.calls, plain.drafts_discarded, plain.stale_replies, plain.bursts_split) == (2, 0, 1, 1)
    assert fenced.reply_delays == pytest.approx([61.0 + GENERATION_S - 31.0])


# --- fixed wall-clock windows ----------------------------------------------------------------

def test_fixed_windows_split_a_burst_that_straddles_a_boundary() -> None:
    calls = fixed_windows([13.0, 14.0, 16.0], window_s=15.0)
    assert answered_groups(calls) == [(15.0, [0, 1]), (30.0, [2])]


def test_fixed_windows_group_by_absolute_time_and_skip_empty_windows() -> None:
    calls = fixed_windows([31.0, 44.9, 45.0, 100.0], window_s=15.0)
    assert answered_groups(calls) == [(45.0, [0, 1]), (60.0, [2]), (105.0, [3])]


# --- seed-004: flush on arrival --------------------------------------------------------------

def test_flush_on_arrival_fires_at_the_second_message_and_strands_a_lone_last_one() -> None:
    calls = flush_on_arrival([0.0, 2.0, 100.0], max_pending=2, max_age_s=5.0)
    assert answered_groups(calls) == [(2.0, [0, 1])]  # message 2 is never answered


def test_flush_on_arrival_answers_a_lone_message_only_when_the_next_one_comes() -> None:
    calls = flush_on_arrival([0.0, 600.0], max_pending=2, max_age_s=5.0)
    assert answered_groups(calls) == [(600.0, [0, 1])]


def test_flush_on_arrival_age_rule_fires_on_a_late_arrival() -> None:
    # With a higher count threshold the age rule is what fires.
    calls = flush_on_arrival([0.0, 1.0, 7.0, 8.0], max_pending=3, max_age_s=5.0)
    assert answered_groups(calls) == [(7.0, [0, 1, 2])]


# --- metrics ---------------------------------------------------------------------------------

def test_metrics_count_split_merged_exact_and_unanswered() -> None:
    # Bursts: 0 = messages 0,1 ; 1 = message 2 ; 2 = messages 3,4 ; 3 = message 5.
    conversation = Conversation(times=(0.0, 1.0, 100.0, 200.0, 201.0, 300.0), burst_of=(0, 0, 1, 2, 2, 3))
    calls = [
        Call(1.0, frozenset({0})),         # burst 0 split ...
        Call(150.0, frozenset({1, 2})),    # ... and this call merges bursts 0 and 1
        Call(205.0, frozenset({3, 4})),    # burst 2 answered whole and alone
    ]                                      # burst 3 (message 5) never answered
    tally = Tally()
    score_conversation(conversation, calls, tally)
    assert (tally.bursts, tally.messages, tally.calls) == (4, 6, 3)
    assert tally.bursts_split == 1
    assert tally.bursts_merged == 1
    assert tally.bursts_exact == 1
    assert tally.messages_never_answered == 1
    # Delay of each burst whose last message was answered (to the reply being sent): bursts 0, 1
    # and 2, not 3.
    g = GENERATION_S
    assert tally.reply_delays == pytest.approx([150.0 + g - 1.0, 150.0 + g - 100.0, 205.0 + g - 201.0])


def test_a_message_answered_twice_is_rejected() -> None:
    conversation = Conversation(times=(0.0, 1.0), burst_of=(0, 0))
    with pytest.raises(ValueError):
        score_conversation(conversation, [Call(1.0, frozenset({0, 1})), Call(2.0, frozenset({1}))], Tally())


def test_metrics_of_a_real_policy_on_a_constructed_conversation() -> None:
    # Two bursts 5 minutes apart; the second has a 40 s pause inside, longer than chatbuffer's window.
    conversation = Conversation(times=(0.0, 3.0, 300.0, 340.0), burst_of=(0, 0, 1, 1))
    tally = Tally()
    score_conversation(conversation, POLICIES[CHATBUFFER](conversation), tally)
    assert (tally.calls, tally.bursts_split, tally.bursts_merged, tally.bursts_exact) == (3, 1, 0, 1)
    assert tally.reply_delays == pytest.approx([30.0 + GENERATION_S, 30.0 + GENERATION_S])


# --- traffic and run() -----------------------------------------------------------------------

def test_traffic_is_seeded_and_ordered() -> None:
    first, again, other = make_traffic(30, seed=1), make_traffic(30, seed=1), make_traffic(30, seed=2)
    assert first == again
    assert first != other
    for conversation in first:
        assert list(conversation.times) == sorted(conversation.times)
        assert conversation.burst_of[0] == 0
        assert all(b - a in (0, 1) for a, b in zip(conversation.burst_of, conversation.burst_of[1:]))


def test_smoke_run_has_the_documented_shape_and_is_deterministic() -> None:
    started = time.perf_counter()
    report = run(smoke=True)
    assert time.perf_counter() - started < 10.0
    assert report == run(smoke=True)
    json.dumps(report, allow_nan=False)

    assert report["name"] == "policies"
    assert report["plot"] is None
    assert [trace["trace"] for trace in report["traces"]] == ["phone", "desk"]
    assert isinstance(report["model"]["phone"]["seed"], int) and "burst_size_messages" in report["model"]["phone"]
    assert [row["clarity"] for row in report["clarity"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for trace in report["traces"]:
        assert {row["policy"] for row in trace["results"]} == set(POLICIES)
        for row in trace["results"]:
            for key in ("llm_calls_per_burst", "bursts_split", "bursts_merged", "messages_never_answered",
                        "drafts_discarded", "stale_replies", "mean_reply_delay_s", "p50_reply_delay_s",
                        "p95_reply_delay_s", "bursts", "messages", "calls"):
                assert key in row, key
            assert math.isclose(row["llm_calls_per_burst"], row["calls"] / row["bursts"], abs_tol=1e-4)
        assert trace["sweep"] and all("knob" in point for point in trace["sweep"])
        by_name = {row["policy"]: row for row in trace["results"]}
        # Scheduled policies answer everything; the arrival-triggered one cannot answer a lone last message.
        assert by_name[CHATBUFFER]["messages_never_answered"] == by_name[ADAPTIVE]["messages_never_answered"] == 0
        assert by_name["seed-004 2 messages or 5 s, checked on arrival"]["messages_never_answered"] > 0
    assert report["summary"] and all(isinstance(line, str) for line in report["summary"])
    assert any(line.startswith("goal 1 ") for line in report["summary"])
    assert any(line.startswith("goal 2 ") for line in report["summary"])
