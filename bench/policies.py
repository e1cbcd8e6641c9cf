"""Buffering policies replayed on synthetic bursty chat traffic.

chatbuffer waits until a customer goes quiet and then answers the whole burst with one LLM call.
This benchmark replays the same seeded traffic through chatbuffer's rule and through the rules of
the seed projects, and counts how often each one answers a customer's turn with exactly one call.

Traffic (bench/traffic.py)
--------------------------
Two seeded shapes, ``phone`` (§5's traffic: gaps inside a turn median 3 s) and ``desk`` (slower
typists, median 30 s), each message with a text drawn from what it is in its turn; or any chat
log given as a CSV trace (``--trace FILE.csv``). Answering takes ``GENERATION_S`` (4 s): from the
moment a burst is taken to be answered to the moment its reply is sent (the model call, with any
voice note or image, and the post). Messages keep arriving meanwhile (open loop).

Policies
--------
Each policy maps one conversation to a list of LLM calls; a call is the time it fires and the set
of message indices it answers.

* ``chatbuffer (fixed 30 s, the default)``: a sliding quiet window of 30 s after the buffer's last message, capped at 300 s
  after its first message, and due at once when the buffer holds 50 messages. A message joins
  the open buffer only if it arrives before the buffer is due; otherwise it opens a new buffer
  (as the project's ingest does). The call fires exactly at the due time: the project's sweeper
  sleeps until the earliest due buffer, so scheduler lateness is taken as 0 here. At the fence,
  ``GENERATION_S`` later, a reply is not sent if newer messages arrived meanwhile: that draft is
  discarded (it cost a call), the newer messages join the burst, and it waits again for the quiet
  window; unless the burst's first message is 300 s old or the merge would pass 50 messages,
  then the draft is sent and the newer messages are the next burst (``fence_reply`` in SQL).
  A conversation's next burst is answered only after the previous one's reply has left.
* ``chatbuffer (adaptive)``: the same fence and caps, with the wait after each message chosen from
  its text and the customer's pace (``BUFFER_POLICY=adaptive``; its decisions come from
  bench/adaptive.py, the SQL's twin, held to it by tests/integration/test_end_of_turn.py).
* ``seed-000 debounce 4s``: cancel-and-reschedule debounce of 4 s, no cap.
* ``seed-002 fixed 15s windows``: cron-style batches. Messages are grouped by fixed 15 s windows
  of absolute time (boundaries at multiples of 15 s; a message exactly on a boundary belongs
  to the window it opens); each non-empty window fires one call at its end.
* ``seed-003 debounce 30s cap 300s``: chatbuffer's window without the fence and without the
  50-message cap: a message that arrives while the reply is being written gets a stale reply,
  then its own.
* ``seed-004 2 messages or 5 s, checked on arrival``: no scheduler. On each arrival the message
  is added to the pending burst; if 2 or more are pending, or the arrival is 5 s or more after
  the first pending message, one call fires now answering everything pending. A lone message
  waits for the next arrival; messages still pending when the traffic ends are never answered.

Metrics (per policy, summed over all conversations)
---------------------------------------------------
* ``llm_calls_per_burst``: total calls / total true bursts (1.0 is ideal). Every model call counts,
  the discarded drafts too (``drafts_discarded``): they cost as much as the replies sent.
* ``stale_replies``: replies sent while a message they do not answer had already arrived (it came
  in while the reply was being written).
* ``bursts_split``: true bursts whose messages were answered by more than one call.
* ``bursts_merged``: calls that answer messages of more than one true burst (a count of calls).
* ``bursts_exact``: true bursts answered by exactly one call that answers nothing else.
* ``messages_never_answered``: messages that no call answers.
* Reply delay of a true burst: (time the reply answering the burst's last message is sent, which
  is its call's time plus ``GENERATION_S``) minus (time of that last message), over bursts whose
  last message was answered.
  ``mean_reply_delay_s`` is the mean; ``p95_reply_delay_s`` the 95th percentile by nearest
  rank (the smallest delay that at least 95 % of the delays do not exceed).

The sweep replays chatbuffer's fenced window and fixed wall-clock windows for several window
sizes, and the adaptive policy with every wait scaled, to show the trade-off between reply
delay and calls per burst; the clarity study regenerates the phone traffic with ever clearer text.
"""
from __future__ import annotations

import importlib.util
import math
import pathlib
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

from bench.adaptive import TurnPolicy, next_typical_gap, trace_message, turn_cue, turn_wait_seconds
from bench.traffic import SEED, Conversation, describe_shape, make_traffic, read_trace

FULL_CONVERSATIONS = 4000
SMOKE_CONVERSATIONS = 150
FULL_SWEEP_WINDOWS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 20.0, 25.0, 30.0, 60.0, 120.0)
SMOKE_SWEEP_WINDOWS_S = (4.0, 30.0)
FULL_ADAPTIVE_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SMOKE_ADAPTIVE_SCALES = (1.0,)
CLARITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
CLARITY_FINISHED_SHARES = (0.07, 0.15, 0.33)
CLARITY_SCALES = (0.5, 0.75, 1.0, 1.5)
MAX_AGE_S = 300.0
MAX_MESSAGES = 50
GENERATION_S = 4.0
# Issue 11's goal on the phone traffic, and the fixed window the desk traffic is held against.
GOAL_CALLS, GOAL_MEAN_S, GOAL_P95_S = 1.05, 10.0, 30.0
DESK_BASELINE_WINDOW_S = 30.0


def observed_traffic(traffic: Sequence[Conversation]) -> dict[str, Any]:
    """What was drawn (or read), so a reader can check the traffic against its model."""
    bursts = sum(c.burst_count for c in traffic)
    messages = sum(len(c.times) for c in traffic)
    sizes = [size for c in traffic for size in burst_sizes(c)]
    intra_gaps = sorted(
        later - earlier
        for c in traffic
        for earlier, later, same_burst in zip(c.times, c.times[1:], pairwise_same_burst(c))
        if same_burst
    )
    return {
        "conversations": len(traffic),
        "bursts": bursts,
        "messages": messages,
        "mean_burst_size": round(messages / bursts, 3) if bursts else None,
        "share_of_lone_message_bursts": round(sizes.count(1) / bursts, 3) if bursts else None,
        "largest_burst": max(sizes, default=0),
        "intra_burst_gap_median_s": round(nearest_rank(intra_gaps, 0.5), 3) if intra_gaps else None,
        "share_of_intra_burst_gaps_over_15s":
            round(sum(g > 15 for g in intra_gaps) / len(intra_gaps), 4) if intra_gaps else None,
        "share_of_intra_burst_gaps_over_30s":
            round(sum(g > 30 for g in intra_gaps) / len(intra_gaps), 4) if intra_gaps else None,
    }


def burst_sizes(conversation: Conversation) -> list[int]:
    sizes = [0] * conversation.burst_count
    for burst in conversation.burst_of:
        sizes[burst] += 1
    return sizes


def pairwise_same_burst(conversation: Conversation) -> list[bool]:
    return [a == b for a, b in zip(conversation.burst_of, conversation.burst_of[1:])]


# --- policies --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One LLM call: when it fires and which messages (indices into the arrival list) it is for.
    A discarded call's draft was never sent: it answers nothing, but it was paid for."""

    fires_at: float
    messages: frozenset[int]
    discarded: bool = False

    @property
    def sent_at(self) -> float:
        return self.fires_at + GENERATION_S


Policy = Callable[[Conversation], list[Call]]


def sliding_window(times: Sequence[float], window_s: float, max_age_s: float | None = None,
                   max_messages: int | None = None) -> list[Call]:
    """Debounce: due `window_s` after the last message, no later than `max_age_s` after the first,
    and at once at `max_messages`. A message joins the buffer only if it arrives before the due time."""
    calls: list[Call] = []
    pending: list[int] = []
    first_at = due_at = -math.inf
    for index, arrived_at in enumerate(times):
        if pending and arrived_at >= due_at:
            calls.append(Call(due_at, frozenset(pending)))
            pending = []
        if not pending:
            first_at = arrived_at
        pending.append(index)
        due_at = arrived_at + window_s
        if max_age_s is not None:
            due_at = min(due_at, first_at + max_age_s)
        if max_messages is not None and len(pending) >= max_messages:
            due_at = arrived_at
    if pending:
        # The scheduler outlives the traffic, so the last buffer always fires.
        calls.append(Call(due_at, frozenset(pending)))
    return calls


def fenced_sliding_window(times: Sequence[float], window_s: float, max_age_s: float, max_messages: int,
                          generation_s: float = GENERATION_S) -> list[Call]:
    """chatbuffer: the sliding window, and the fence before sending (fence_reply in SQL): messages
    that arrived while the reply was being written discard the draft and join the burst, unless the
    burst is past max age or the merge would pass max count."""
    return fenced_window(times, lambda _index, _gap: window_s, max_age_s, max_messages, generation_s)


WaitOf = Callable[[int, "float | None"], float]  # (message index, customer's typical gap) -> quiet time


def fenced_window(times: Sequence[float], wait_of: WaitOf, max_age_s: float, max_messages: int,
                  generation_s: float = GENERATION_S) -> list[Call]:
    """The fenced window with a wait chosen per message. The customer's typical gap is learnt from
    the gaps inside each burst and carried to the conversation's next burst once it is answered."""

    def due(message: int, first_at: float, count: int, typical: float | None) -> float:
        if count >= max_messages:
            return times[message]
        return min(times[message] + wait_of(message, typical), first_at + max_age_s)

    calls: list[Call] = []
    index, busy_until = 0, -math.inf  # the conversation's previous reply leaves at busy_until
    known_gap: float | None = None    # what the conversation's answered bursts taught
    while index < len(times):
        first_at, typical = times[index], known_gap
        pending, index = [index], index + 1
        due_at = due(pending[0], first_at, 1, typical)
        while True:
            while index < len(times) and times[index] < due_at:
                typical = next_typical_gap(typical, times[index] - times[pending[-1]])
                pending.append(index)
                due_at = due(index, first_at, len(pending), typical)
                index += 1
            taken_at = max(due_at, busy_until)
            fence = taken_at + generation_s
            newer = [m for m in range(index, len(times)) if times[m] < fence]
            if newer and fence < first_at + max_age_s and len(pending) + len(newer) <= max_messages:
                calls.append(Call(taken_at, frozenset(pending), discarded=True))
                # The newer messages opened a burst of their own, starting from this one's pace; the
                # fence merges them in at that burst's due time, and this burst keeps its own pace.
                newer_typical = typical
                for earlier, later in zip(newer, newer[1:]):
                    newer_typical = next_typical_gap(newer_typical, times[later] - times[earlier])
                pending += newer
                index += len(newer)
                due_at = max(due(newer[-1], first_at, len(pending), newer_typical), fence)
                continue
            calls.append(Call(taken_at, frozenset(pending)))
            busy_until, known_gap = fence, typical
            break
    return calls


def adaptive_window(conversation: Conversation, policy: TurnPolicy = TurnPolicy(), max_age_s: float = MAX_AGE_S,
                    max_messages: int = MAX_MESSAGES) -> list[Call]:
    cues = [turn_cue(*trace_message(text)) for text in conversation.texts]
    return fenced_window(conversation.times, lambda i, gap: turn_wait_seconds(policy, cues[i], gap),
                         max_age_s, max_messages)


def fixed_windows(times: Sequence[float], window_s: float) -> list[Call]:
    """Cron-style batches: one call per non-empty wall-clock window, fired at the window's end."""
    by_window: dict[int, list[int]] = {}
    for index, arrived_at in enumerate(times):
        by_window.setdefault(math.floor(arrived_at / window_s), []).append(index)
    return [Call((window + 1) * window_s, frozenset(indices)) for window, indices in sorted(by_window.items())]


def flush_on_arrival(times: Sequence[float], max_pending: int, max_age_s: float) -> list[Call]:
    """No scheduler: only an arriving message can trigger a call, so a lone last message waits forever."""
    calls: list[Call] = []
    pending: list[int] = []
    for index, arrived_at in enumerate(times):
        pending.append(index)
        first_at = times[pending[0]]
        if len(pending) >= max_pending or arrived_at - first_at >= max_age_s:
            calls.append(Call(arrived_at, frozenset(pending)))
            pending = []
    return calls


def on_times(policy: Callable[[Sequence[float]], list[Call]]) -> Policy:
    """A policy that reads only the arrival times."""
    return lambda conversation: policy(conversation.times)


CHATBUFFER = "chatbuffer (fixed 30 s, the default)"
ADAPTIVE = "chatbuffer (adaptive)"
POLICIES: dict[str, Policy] = {
    CHATBUFFER: on_times(partial(fenced_sliding_window, window_s=30.0, max_age_s=MAX_AGE_S,
                                 max_messages=MAX_MESSAGES)),
    ADAPTIVE: adaptive_window,
    "seed-000 debounce 4s": on_times(partial(sliding_window, window_s=4.0)),
    "seed-002 fixed 15s windows": on_times(partial(fixed_windows, window_s=15.0)),
    "seed-003 debounce 30s cap 300s": on_times(partial(sliding_window, window_s=30.0, max_age_s=MAX_AGE_S)),
    "seed-004 2 messages or 5 s, checked on arrival": on_times(partial(flush_on_arrival, max_pending=2,
                                                                       max_age_s=5.0)),
}

# Where each named policy sits in the sweep plot, and how it is drawn there.
POLICY_MARKERS: dict[str, dict[str, Any]] = {
    CHATBUFFER: {"marker": "*", "s": 320, "facecolors": "none", "edgecolors": "black", "linewidths": 1.5},
    ADAPTIVE: {"marker": "P", "s": 160, "color": "tab:green", "edgecolors": "black", "linewidths": 0.8},
    "seed-000 debounce 4s": {"marker": "X", "s": 110, "color": "tab:red"},
    "seed-002 fixed 15s windows": {"marker": "s", "s": 90, "color": "tab:purple"},
    "seed-003 debounce 30s cap 300s": {"marker": "D", "s": 45, "color": "tab:olive"},
    "seed-004 2 messages or 5 s, checked on arrival": {"marker": "^", "s": 110, "color": "tab:brown"},
}


# --- metrics ---------------------------------------------------------------------------------

@dataclass
class Tally:
    """Counts summed over conversations; delays kept whole for the percentile."""

    bursts: int = 0
    messages: int = 0
    calls: int = 0
    bursts_split: int = 0
    bursts_merged: int = 0
    bursts_exact: int = 0
    messages_never_answered: int = 0
    drafts_discarded: int = 0
    stale_replies: int = 0
    reply_delays: list[float] = field(default_factory=list)


def score_conversation(conversation: Conversation, all_calls: Sequence[Call], tally: Tally) -> None:
    calls = [call for call in all_calls if not call.discarded]  # only sent replies answer anything
    answered_by = answering_calls(len(conversation.times), calls)
    bursts_of_call = [{conversation.burst_of[m] for m in call.messages} for call in calls]
    calls_of_burst: list[set[int]] = [set() for _ in range(conversation.burst_count)]
    unanswered_in_burst = [0] * conversation.burst_count
    last_message_of_burst = [0] * conversation.burst_count
    for message, burst in enumerate(conversation.burst_of):
        last_message_of_burst[burst] = message
        if answered_by[message] is None:
            unanswered_in_burst[burst] += 1
        else:
            calls_of_burst[burst].add(answered_by[message])

    tally.bursts += conversation.burst_count
    tally.messages += len(conversation.times)
    tally.calls += len(all_calls)
    tally.drafts_discarded += len(all_calls) - len(calls)
    tally.stale_replies += sum(any(call.fires_at <= t < call.sent_at and m not in call.messages
                                   for m, t in enumerate(conversation.times)) for call in calls)
    tally.messages_never_answered += answered_by.count(None)
    tally.bursts_merged += sum(len(bursts) > 1 for bursts in bursts_of_call)
    for burst, answering in enumerate(calls_of_burst):
        tally.bursts_split += len(answering) > 1
        whole_and_alone = len(answering) == 1 and not unanswered_in_burst[burst] \
            and len(bursts_of_call[next(iter(answering))]) == 1
        tally.bursts_exact += whole_and_alone
        last = last_message_of_burst[burst]
        if answered_by[last] is not None:
            tally.reply_delays.append(calls[answered_by[last]].sent_at - conversation.times[last])


def answering_calls(message_count: int, calls: Sequence[Call]) -> list[int | None]:
    """For each message, the index of the one call that answers it, or None."""
    answered_by: list[int | None] = [None] * message_count
    for call_index, call in enumerate(calls):
        for message in call.messages:
            if answered_by[message] is not None:
                raise ValueError(f"message {message} answered twice")
            answered_by[message] = call_index
    return answered_by


def nearest_rank(sorted_values: Sequence[float], quantile: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(quantile * len(sorted_values)))
    return sorted_values[rank - 1]


def replay(policy: Policy, traffic: Sequence[Conversation]) -> Tally:
    tally = Tally()
    for conversation in traffic:
        score_conversation(conversation, policy(conversation), tally)
    return tally


def result_row(name: str, tally: Tally) -> dict[str, Any]:
    delays = sorted(tally.reply_delays or [])
    mean_delay = sum(delays) / len(delays) if delays else math.nan
    return {
        "policy": name,
        "llm_calls_per_burst": round(tally.calls / tally.bursts, 4),
        "bursts_split": tally.bursts_split,
        "bursts_merged": tally.bursts_merged,
        "bursts_exact": tally.bursts_exact,
        "messages_never_answered": tally.messages_never_answered,
        "drafts_discarded": tally.drafts_discarded,
        "stale_replies": tally.stale_replies,
        "mean_reply_delay_s": round(mean_delay, 3),
        "p50_reply_delay_s": round(nearest_rank(delays, 0.5), 3),
        "p95_reply_delay_s": round(nearest_rank(delays, 0.95), 3),
        "bursts": tally.bursts,
        "messages": tally.messages,
        "calls": tally.calls,
        "bursts_with_reply_delay": len(delays),
    }


# --- sweep and plot --------------------------------------------------------------------------

FIXED_FAMILY = "chatbuffer fixed window (cap 300 s)"
ADAPTIVE_FAMILY = "chatbuffer adaptive, every wait scaled"
SWEEP_FAMILIES: dict[str, Callable[[float], Policy]] = {
    FIXED_FAMILY: lambda w: on_times(partial(
        fenced_sliding_window, window_s=w, max_age_s=MAX_AGE_S, max_messages=MAX_MESSAGES)),
    "fixed wall-clock windows": lambda w: on_times(partial(fixed_windows, window_s=w)),
    ADAPTIVE_FAMILY: lambda scale: partial(adaptive_window, policy=TurnPolicy(scale=scale)),
}


def sweep(traffic: Sequence[Conversation], windows_s: Sequence[float], scales: Sequence[float]) -> list[dict[str, Any]]:
    return [point for family in SWEEP_FAMILIES
            for point in sweep_family(family, traffic, scales if family == ADAPTIVE_FAMILY else windows_s)]


def sweep_family(family: str, traffic: Sequence[Conversation], knobs: Sequence[float]) -> list[dict[str, Any]]:
    label = "x{:g}" if family == ADAPTIVE_FAMILY else "{:g}s"
    points = []
    for knob in knobs:
        row = result_row(f"{family} {label.format(knob)}", replay(SWEEP_FAMILIES[family](knob), traffic))
        points.append({"family": family, "knob": knob, "label": label.format(knob), **row})
    return points


def best_under(points: Sequence[dict[str, Any]], family: str, max_calls: float) -> dict[str, Any] | None:
    """The family's quickest point at or under max_calls model calls per turn."""
    fitting = [p for p in points if p["family"] == family and p["llm_calls_per_burst"] <= max_calls]
    return min(fitting, key=lambda p: p["mean_reply_delay_s"], default=None)


def clarity_study(conversations: int, smoke: bool) -> list[dict[str, Any]]:
    """The phone traffic (same arrival times) with ever clearer text: how quick can each family be
    at GOAL_CALLS calls per turn? The adaptive family is searched over its scale and its share
    after a finished-looking message (the knob clearer text pays off through)."""
    windows = SMOKE_SWEEP_WINDOWS_S if smoke else FULL_SWEEP_WINDOWS_S
    grid = [(0.33, 1.0)] if smoke else [(f, s) for f in CLARITY_FINISHED_SHARES for s in CLARITY_SCALES]
    # The fixed window reads no text and every clarity has the same arrival times: one sweep serves all.
    fixed = best_under(sweep_family(FIXED_FAMILY, make_traffic(conversations, shape="phone"), windows),
                       FIXED_FAMILY, GOAL_CALLS)
    rows = []
    for clarity in CLARITIES:
        traffic = make_traffic(conversations, shape="phone", clarity=clarity)
        points = []
        for finished_share, scale in grid:
            policy = TurnPolicy(finished_share=finished_share, scale=scale)
            label = f"finished {finished_share:g}, x{scale:g}"
            points.append({"family": ADAPTIVE_FAMILY, "knob": scale, "label": label,
                           **result_row(label, replay(partial(adaptive_window, policy=policy), traffic))})
        adaptive = best_under(points, ADAPTIVE_FAMILY, GOAL_CALLS)
        rows.append({"clarity": clarity, **{
            key: None if point is None else {k: point[k] for k in (
                "label", "llm_calls_per_burst", "mean_reply_delay_s", "p95_reply_delay_s")}
            for key, point in (("adaptive", adaptive), ("fixed", fixed))}})
    return rows


def plot(evaluations: Sequence[dict[str, Any]], clarity: Sequence[dict[str, Any]] | None,
         path: pathlib.Path) -> pathlib.Path:
    import matplotlib  # only here: the simulation itself must not need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Each trace whole, then (generated traffic) the phone traffic near one call per turn, where the
    # goal is, and the clarity study.
    panels: list[tuple[Callable[[Any], None], ...]] = [(partial(plot_trace, evaluation=e),) for e in evaluations]
    if clarity:
        panels += [(partial(plot_trace, evaluation=evaluations[0], zoom=True),), (partial(plot_clarity, clarity=clarity),)]
    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(8 * columns, 6 * rows), squeeze=False)
    for ax, (draw,) in zip(axes.flat, panels):
        draw(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_trace(ax: Any, evaluation: dict[str, Any], zoom: bool = False) -> None:
    # Each family puts its labels on its own side of its line, so coinciding points stay readable.
    label_offsets = [((-5, -11), "right"), ((5, 5), "left"), ((5, -11), "left")]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for family, (offset, align), color in zip(SWEEP_FAMILIES, label_offsets, colors):
        points = [p for p in evaluation["sweep"] if p["family"] == family]
        if not points:
            continue
        (line,) = ax.plot([p["mean_reply_delay_s"] for p in points], [p["llm_calls_per_burst"] for p in points],
                          "o-", markersize=4, label=family, zorder=2, color=color)
        for p in points:
            ax.annotate(p["label"], (p["mean_reply_delay_s"], p["llm_calls_per_burst"]), textcoords="offset points",
                        xytext=offset, ha=align, fontsize=7, color=line.get_color())
    for row in evaluation["results"]:
        where = (row["mean_reply_delay_s"], row["llm_calls_per_burst"])
        ax.scatter([where[0]], [where[1]], label=row["policy"], zorder=3,
                   **POLICY_MARKERS.get(row["policy"], {"marker": "P", "s": 80}))
        if row["messages_never_answered"]:
            # The plot's axes cannot show this flaw, so it is written next to the point.
            ax.annotate(f"{row['messages_never_answered']} of {row['messages']}\nmessages never answered", where,
                        textcoords="offset points", xytext=(0, -26), ha="center", fontsize=7)
    if evaluation["trace"] == "phone":
        ax.fill_between([1, GOAL_MEAN_S], 0.95, GOAL_CALLS, color="tab:green", alpha=0.12,
                        label=f"goal: <= {GOAL_CALLS} calls at <= {GOAL_MEAN_S:g} s")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    if zoom:
        ax.set_xlim(4, 60)
        ax.set_ylim(0.99, 1.2)
    else:
        ax.set_ylim(0.95, min(3.0, ax.get_ylim()[1]))
    ax.set_xlabel("mean reply delay after the customer's last message of a turn (s, log scale)")
    ax.set_ylabel("LLM calls per customer turn (1 = ideal)")
    ax.set_title(f"{evaluation['trace']} traffic{', near one call per turn' if zoom else ''}: reply delay vs "
                 "LLM calls\nlines: window (or wait scale) sweeps; markers: named policies", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def plot_clarity(ax: Any, clarity: Sequence[dict[str, Any]]) -> None:
    xs = [row["clarity"] for row in clarity]
    for key, label, style, color in (("adaptive", "chatbuffer adaptive, best of its shares and scale", "P-", "tab:green"),
                                     ("fixed", "chatbuffer fixed window, best window", "o--", "tab:blue")):
        ys = [row[key]["mean_reply_delay_s"] if row[key] else math.nan for row in clarity]
        ax.plot(xs, ys, style, label=label, color=color)
    ax.axhline(GOAL_MEAN_S, color="tab:green", linestyle=":", label=f"goal: {GOAL_MEAN_S:g} s")
    ax.set_xlabel("clarity of the customers' text\n(0 = chats as modelled in bench/traffic.py, 1 = the text always tells)")
    ax.set_ylabel(f"quickest mean reply delay at <= {GOAL_CALLS} calls per turn (s)")
    ax.set_title("phone traffic, ever clearer text: how quick can a policy be?", fontsize=10)
    ax.set_ylim(0, None)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


# --- report ----------------------------------------------------------------------------------

def summary_lines(evaluation: dict[str, Any]) -> list[str]:
    observed = evaluation["observed"]
    lines = [
        f"{evaluation['trace']}: {observed['conversations']} conversations, {observed['bursts']} customer turns, "
        f"{observed['messages']} messages, median gap inside a turn {observed['intra_burst_gap_median_s']} s",
        f"{'policy':<48} {'calls/turn':>10} {'split':>6} {'merged':>6} {'exact':>6} "
        f"{'unanswered':>10} {'discarded':>9} {'stale':>6} {'mean s':>7} {'p50 s':>7} {'p95 s':>7}",
    ]
    for row in evaluation["results"]:
        lines.append(
            f"{row['policy']:<48} {row['llm_calls_per_burst']:>10.3f} {row['bursts_split']:>6} "
            f"{row['bursts_merged']:>6} {row['bursts_exact']:>6} {row['messages_never_answered']:>10} "
            f"{row['drafts_discarded']:>9} {row['stale_replies']:>6} "
            f"{row['mean_reply_delay_s']:>7.2f} {row['p50_reply_delay_s']:>7.2f} {row['p95_reply_delay_s']:>7.2f}"
        )
    for family in SWEEP_FAMILIES:
        best = best_under(evaluation["sweep"], family, GOAL_CALLS)
        lines.append(f"  quickest {family} at <= {GOAL_CALLS} calls/turn: " + (
            "none" if best is None else f"{best['label']}: {best['llm_calls_per_burst']:.3f} calls, "
            f"mean {best['mean_reply_delay_s']:.1f} s, p95 {best['p95_reply_delay_s']:.1f} s"))
    lines.extend(comparison_notes(evaluation["results"]))
    return lines


def comparison_notes(results: Sequence[dict[str, Any]]) -> list[str]:
    by_name = {row["policy"]: row for row in results}
    chatbuffer, seed_003 = by_name.get(CHATBUFFER), by_name.get("seed-003 debounce 30s cap 300s")
    if chatbuffer is None or seed_003 is None:
        return []
    return [f"  chatbuffer's fence against seed-003's plain window: {seed_003['stale_replies']} stale replies -> "
            f"{chatbuffer['stale_replies']}, paid for with {chatbuffer['drafts_discarded']} discarded drafts "
            f"(counted in calls/turn: {seed_003['llm_calls_per_burst']:.3f} -> "
            f"{chatbuffer['llm_calls_per_burst']:.3f})."]


def goal_lines(evaluations: Sequence[dict[str, Any]]) -> list[str]:
    """Issue 11's two goal lines, checked on the adaptive policy at its best scale."""
    by_trace = {e["trace"]: e for e in evaluations}
    lines = []
    if "phone" in by_trace:
        fitting = [p for p in by_trace["phone"]["sweep"] if p["family"] == ADAPTIVE_FAMILY
                   and p["llm_calls_per_burst"] <= GOAL_CALLS and p["p95_reply_delay_s"] <= GOAL_P95_S
                   and not p["messages_never_answered"]]
        best = min(fitting, key=lambda p: p["mean_reply_delay_s"], default=None)
        met = best is not None and best["mean_reply_delay_s"] <= GOAL_MEAN_S
        lines.append(f"goal 1 (phone: <= {GOAL_CALLS} calls/turn, mean <= {GOAL_MEAN_S:g} s, p95 <= {GOAL_P95_S:g} s): "
                     + ("MET" if met else "NOT MET") + " by the adaptive policy at any scale"
                     + ("" if best is None else f" (quickest fitting scale {best['label']}: mean "
                        f"{best['mean_reply_delay_s']:.1f} s)"))
    if "desk" in by_trace:
        rows = {row["policy"]: row for row in by_trace["desk"]["results"]}
        adaptive, fixed = rows[ADAPTIVE], rows[CHATBUFFER]
        met = adaptive["llm_calls_per_burst"] <= fixed["llm_calls_per_burst"] and \
            adaptive["mean_reply_delay_s"] <= fixed["mean_reply_delay_s"]
        lines.append(f"goal 2 (desk: not worse than the fixed {DESK_BASELINE_WINDOW_S:g} s window on either axis): "
                     + ("MET" if met else "NOT MET") + f": {adaptive['llm_calls_per_burst']:.3f} calls at "
                     f"{adaptive['mean_reply_delay_s']:.1f} s against {fixed['llm_calls_per_burst']:.3f} at "
                     f"{fixed['mean_reply_delay_s']:.1f} s")
    return lines


def evaluate(trace: str, traffic: Sequence[Conversation], smoke: bool) -> dict[str, Any]:
    return {
        "trace": trace,
        "observed": observed_traffic(traffic),
        "results": [result_row(name, replay(policy, traffic)) for name, policy in POLICIES.items()],
        "sweep": sweep(traffic, SMOKE_SWEEP_WINDOWS_S if smoke else FULL_SWEEP_WINDOWS_S,
                       SMOKE_ADAPTIVE_SCALES if smoke else FULL_ADAPTIVE_SCALES),
    }


def run(smoke: bool = False, out_dir: pathlib.Path | None = None, trace: pathlib.Path | None = None) -> dict:
    conversations = SMOKE_CONVERSATIONS if smoke else FULL_CONVERSATIONS
    if trace is not None:
        evaluations = [evaluate(trace.name, read_trace(trace), smoke)]
        models = {trace.name: {"trace_file": trace.name}}
        clarity = None
    else:
        evaluations = [evaluate(shape, make_traffic(conversations, SEED, shape), smoke) for shape in ("phone", "desk")]
        models = {shape: describe_shape(shape, SEED, conversations) for shape in ("phone", "desk")}
        clarity = clarity_study(conversations, smoke)
    plot_path = None
    summary = [line for evaluation in evaluations for line in [*summary_lines(evaluation), ""]]
    if out_dir is not None:
        if importlib.util.find_spec("matplotlib") is None:
            summary.append("(no plot: matplotlib is not installed; `make policies` installs it)")
        else:
            plot_path = plot(evaluations, clarity, out_dir / "policies.png")
    summary += goal_lines(evaluations)
    if clarity:
        summary.append("quickest mean delay at <= 1.05 calls/turn on phone traffic, by clarity of the text: " + ", ".join(
            f"{row['clarity']:g}: adaptive {fmt_delay(row['adaptive'])} / fixed {fmt_delay(row['fixed'])}"
            for row in clarity))
    return {
        "name": "policies",
        "model": models,
        "traces": evaluations,
        "clarity": clarity,
        "plot": str(plot_path) if plot_path is not None else None,
        "summary": summary,
    }


def fmt_delay(point: dict[str, Any] | None) -> str:
    return "-" if point is None else f"{point['mean_reply_delay_s']:.1f} s (p95 {point['p95_reply_delay_s']:.0f} s)"
