"""Buffering policies replayed on synthetic bursty chat traffic.

chatbuffer waits until a customer goes quiet and then answers the whole burst with one LLM call.
This benchmark replays the same seeded traffic through chatbuffer's rule and through the rules of
the seed projects, and counts how often each one answers a customer's turn with exactly one call.

Traffic model (also returned as ``run()["model"]``)
-------------------------------------------------
* Many independent conversations; nothing one conversation does affects another.
* Each conversation starts at a uniform random time within one day (absolute time only matters
  for the fixed wall-clock windows) and is a sequence of *true bursts*: the ground truth of
  what the customer meant as one turn. Bursts per conversation: geometric on 1, 2, 3, ...
  with mean 5.
* Burst size: geometric on 1, 2, 3, ... with mean 3 (p = 1/3), so a third of all bursts are a
  lone message.
* Gap between two messages of one burst: lognormal, median 3 s, sigma 1. Heavy-tailed: about
  5 % of these gaps are longer than 15 s and about 1 % longer than 30 s (someone typing a long
  message, or looking something up mid-turn).
* Gap between two bursts: 60 s + exponential with mean 540 s, so never under 60 s, mean 10 min.
* The traffic is open-loop: customers do not react to replies or to missing replies.
* Answering takes ``GENERATION_S`` (4 s): from the moment a burst is taken to be answered to the
  moment its reply is sent (the model call, with any voice note or image, and the post). Messages
  keep arriving meanwhile.
* One ``random.Random(seed)`` draws everything in a fixed order, so a seed gives the same
  numbers on every run and every machine.

Policies
--------
Each policy maps one conversation's arrival times to a list of LLM calls; a call is the time it
fires and the set of message indices it answers.

* ``chatbuffer``: a sliding quiet window of 30 s after the buffer's last message, capped at 300 s
  after its first message, and due at once when the buffer holds 50 messages. A message joins
  the open buffer only if it arrives before the buffer is due; otherwise it opens a new buffer
  (as the project's ingest does). The call fires exactly at the due time: the project's sweeper
  sleeps until the earliest due buffer, so scheduler lateness is taken as 0 here. At the fence,
  ``GENERATION_S`` later, a reply is not sent if newer messages arrived meanwhile: that draft is
  discarded (it cost a call), the newer messages join the burst, and it waits again for the quiet
  window; unless the burst's first message is 300 s old or the merge would pass 50 messages,
  then the draft is sent and the newer messages are the next burst (``fence_reply`` in SQL).
  A conversation's next burst is answered only after the previous one's reply has left.
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

The window sweep replays a sliding-window debounce capped at 300 s and fixed wall-clock windows
for several window sizes, to show the trade-off between reply delay and calls per burst.
"""
from __future__ import annotations

import math
import pathlib
import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

SEED = 20240611
FULL_CONVERSATIONS = 4000
SMOKE_CONVERSATIONS = 150
FULL_SWEEP_WINDOWS_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
SMOKE_SWEEP_WINDOWS_S = (4.0, 30.0)
SWEEP_CAP_S = 300.0

MEAN_BURSTS_PER_CONVERSATION = 5.0
MEAN_BURST_SIZE = 3.0
INTRA_GAP_MEDIAN_S = 3.0
INTRA_GAP_SIGMA = 1.0
INTER_GAP_MIN_S = 60.0
INTER_GAP_MEAN_S = 600.0
DAY_S = 86_400.0
GENERATION_S = 4.0


# --- traffic ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Conversation:
    """Arrival times in order, and for each message the index of its true burst."""

    times: tuple[float, ...]
    burst_of: tuple[int, ...]

    @property
    def burst_count(self) -> int:
        return self.burst_of[-1] + 1 if self.burst_of else 0


def geometric_at_least_one(rng: random.Random, mean: float) -> int:
    """1, 2, 3, ... with P(k) = p (1-p)^(k-1), p = 1/mean: lone items are the most common."""
    success = 1.0 / mean
    count = 1
    while rng.random() >= success:
        count += 1
    return count


def intra_burst_gap(rng: random.Random) -> float:
    return rng.lognormvariate(math.log(INTRA_GAP_MEDIAN_S), INTRA_GAP_SIGMA)


def inter_burst_gap(rng: random.Random) -> float:
    # Shifted rather than clipped, so the mean stays exactly INTER_GAP_MEAN_S.
    return INTER_GAP_MIN_S + rng.expovariate(1.0 / (INTER_GAP_MEAN_S - INTER_GAP_MIN_S))


def make_conversation(rng: random.Random) -> Conversation:
    times: list[float] = []
    burst_of: list[int] = []
    now = rng.uniform(0.0, DAY_S)
    for burst in range(geometric_at_least_one(rng, MEAN_BURSTS_PER_CONVERSATION)):
        if burst:
            now += inter_burst_gap(rng)
        for position in range(geometric_at_least_one(rng, MEAN_BURST_SIZE)):
            if position:
                now += intra_burst_gap(rng)
            times.append(now)
            burst_of.append(burst)
    return Conversation(tuple(times), tuple(burst_of))


def make_traffic(conversations: int, seed: int = SEED) -> list[Conversation]:
    rng = random.Random(seed)
    return [make_conversation(rng) for _ in range(conversations)]


def describe_model(seed: int, conversations: int) -> dict[str, Any]:
    return {
        "description": "independent conversations, each a sequence of true bursts (one customer turn each)",
        "seed": seed,
        "conversations": conversations,
        "conversation_start_s": {"distribution": "uniform", "low": 0.0, "high": DAY_S},
        "bursts_per_conversation": {"distribution": "geometric on 1,2,3,...", "mean": MEAN_BURSTS_PER_CONVERSATION},
        "burst_size_messages": {"distribution": "geometric on 1,2,3,...", "mean": MEAN_BURST_SIZE,
                                "p": 1.0 / MEAN_BURST_SIZE},
        "intra_burst_gap_s": {"distribution": "lognormal", "median": INTRA_GAP_MEDIAN_S, "sigma": INTRA_GAP_SIGMA},
        "inter_burst_gap_s": {"distribution": "minimum + exponential", "minimum": INTER_GAP_MIN_S,
                              "mean": INTER_GAP_MEAN_S},
        "scheduler_lateness_s": 0.0,
        "generation_s": GENERATION_S,
        "closed_loop": False,
    }


def observed_traffic(traffic: Sequence[Conversation]) -> dict[str, Any]:
    """What the seed actually drew, so a reader can check the model against its parameters."""
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
        "bursts": bursts,
        "messages": messages,
        "mean_burst_size": round(messages / bursts, 3),
        "share_of_lone_message_bursts": round(sizes.count(1) / bursts, 3),
        "largest_burst": max(sizes),
        "intra_burst_gap_median_s": round(nearest_rank(intra_gaps, 0.5), 3),
        "share_of_intra_burst_gaps_over_15s": round(sum(g > 15 for g in intra_gaps) / len(intra_gaps), 4),
        "share_of_intra_burst_gaps_over_30s": round(sum(g > 30 for g in intra_gaps) / len(intra_gaps), 4),
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


Policy = Callable[[Sequence[float]], list[Call]]


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

    def due(last_at: float, first_at: float, count: int) -> float:
        return last_at if count >= max_messages else min(last_at + window_s, first_at + max_age_s)

    calls: list[Call] = []
    index, busy_until = 0, -math.inf  # the conversation's previous reply leaves at busy_until
    while index < len(times):
        first_at = times[index]
        pending, index = [index], index + 1
        due_at = due(first_at, first_at, 1)
        while True:
            while index < len(times) and times[index] < due_at:
                pending.append(index)
                due_at = due(times[index], first_at, len(pending))
                index += 1
            taken_at = max(due_at, busy_until)
            fence = taken_at + generation_s
            newer = [m for m in range(index, len(times)) if times[m] < fence]
            if newer and fence < first_at + max_age_s and len(pending) + len(newer) <= max_messages:
                calls.append(Call(taken_at, frozenset(pending), discarded=True))
                pending += newer
                index += len(newer)
                due_at = max(due(times[newer[-1]], first_at, len(pending)), fence)
                continue
            calls.append(Call(taken_at, frozenset(pending)))
            busy_until = fence
            break
    return calls


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


CHATBUFFER = "chatbuffer"
POLICIES: dict[str, Policy] = {
    CHATBUFFER: partial(fenced_sliding_window, window_s=30.0, max_age_s=300.0, max_messages=50),
    "seed-000 debounce 4s": partial(sliding_window, window_s=4.0),
    "seed-002 fixed 15s windows": partial(fixed_windows, window_s=15.0),
    "seed-003 debounce 30s cap 300s": partial(sliding_window, window_s=30.0, max_age_s=300.0),
    "seed-004 2 messages or 5 s, checked on arrival": partial(flush_on_arrival, max_pending=2, max_age_s=5.0),
}

# Where each named policy sits in the sweep plot, and how it is drawn there.
POLICY_MARKERS: dict[str, dict[str, Any]] = {
    CHATBUFFER: {"marker": "*", "s": 320, "facecolors": "none", "edgecolors": "black", "linewidths": 1.5},
    "seed-000 debounce 4s": {"marker": "X", "s": 110, "color": "tab:red"},
    "seed-002 fixed 15s windows": {"marker": "s", "s": 90, "color": "tab:purple"},
    "seed-003 debounce 30s cap 300s": {"marker": "D", "s": 45, "color": "tab:green"},
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
        score_conversation(conversation, policy(conversation.times), tally)
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
        "p95_reply_delay_s": round(nearest_rank(delays, 0.95), 3),
        "bursts": tally.bursts,
        "messages": tally.messages,
        "calls": tally.calls,
        "bursts_with_reply_delay": len(delays),
    }


# --- sweep and plot --------------------------------------------------------------------------

SWEEP_FAMILIES: dict[str, Callable[[float], Policy]] = {
    f"sliding window, cap {SWEEP_CAP_S:g} s": lambda w: partial(sliding_window, window_s=w, max_age_s=SWEEP_CAP_S),
    "fixed wall-clock windows": lambda w: partial(fixed_windows, window_s=w),
}


def sweep(traffic: Sequence[Conversation], windows_s: Sequence[float]) -> list[dict[str, Any]]:
    points = []
    for family, make_policy in SWEEP_FAMILIES.items():
        for window_s in windows_s:
            row = result_row(f"{family} {window_s:g}s", replay(make_policy(window_s), traffic))
            points.append({"family": family, "window_s": window_s, **row})
    return points


def plot(sweep_points: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
         path: pathlib.Path) -> pathlib.Path:
    import matplotlib  # only here: the simulation itself must not need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    # Points of the two families can coincide (debounce 1 s and fixed 2 s both average 1 s), so
    # each family puts its window labels on its own side of the line.
    label_offsets = [((-5, -11), "right"), ((5, 5), "left")]
    for family, (offset, align) in zip(SWEEP_FAMILIES, label_offsets):
        points = [p for p in sweep_points if p["family"] == family]
        xs = [p["mean_reply_delay_s"] for p in points]
        ys = [p["llm_calls_per_burst"] for p in points]
        (line,) = ax.plot(xs, ys, "o-", markersize=4, label=family, zorder=2)
        for p in points:
            ax.annotate(f"{p['window_s']:g}s", (p["mean_reply_delay_s"], p["llm_calls_per_burst"]),
                        textcoords="offset points", xytext=offset, ha=align, fontsize=7, color=line.get_color())
    for row in results:
        where = (row["mean_reply_delay_s"], row["llm_calls_per_burst"])
        ax.scatter([where[0]], [where[1]], label=row["policy"], zorder=3,
                   **POLICY_MARKERS.get(row["policy"], {"marker": "P", "s": 80}))
        if row["messages_never_answered"]:
            # The plot's axes cannot show this flaw, so it is written next to the point.
            ax.annotate(f"{row['messages_never_answered']} of {row['messages']}\nmessages never answered", where,
                        textcoords="offset points", xytext=(0, -26), ha="center", fontsize=7)
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("mean reply delay after the customer's last message of a turn (s, log scale)")
    ax.set_ylabel("LLM calls per customer turn (1 = ideal)")
    ax.set_title("Buffering policies on bursty chat traffic: reply delay vs LLM calls\n"
                 "lines: window size sweep (labels = window); markers: named policies", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- report ----------------------------------------------------------------------------------

def summary_lines(results: Sequence[dict[str, Any]], model: dict[str, Any]) -> list[str]:
    observed = model["observed"]
    lines = [
        f"{model['conversations']} conversations, {observed['bursts']} true bursts, "
        f"{observed['messages']} messages (seed {model['seed']})",
        f"{'policy':<48} {'calls/burst':>11} {'split':>6} {'merged':>6} {'exact':>6} "
        f"{'unanswered':>10} {'discarded':>9} {'stale':>6} {'mean s':>8} {'p95 s':>8}",
    ]
    for row in results:
        lines.append(
            f"{row['policy']:<48} {row['llm_calls_per_burst']:>11.3f} {row['bursts_split']:>6} "
            f"{row['bursts_merged']:>6} {row['bursts_exact']:>6} {row['messages_never_answered']:>10} "
            f"{row['drafts_discarded']:>9} {row['stale_replies']:>6} "
            f"{row['mean_reply_delay_s']:>8.2f} {row['p95_reply_delay_s']:>8.2f}"
        )
    lines.extend(comparison_notes(results))
    return lines


def comparison_notes(results: Sequence[dict[str, Any]]) -> list[str]:
    by_name = {row["policy"]: row for row in results}
    chatbuffer, seed_003 = by_name.get(CHATBUFFER), by_name.get("seed-003 debounce 30s cap 300s")
    if chatbuffer is None or seed_003 is None:
        return []
    return [f"chatbuffer's fence against seed-003's plain window: {seed_003['stale_replies']} stale replies -> "
            f"{chatbuffer['stale_replies']}, paid for with {chatbuffer['drafts_discarded']} discarded drafts "
            f"(counted in calls/burst: {seed_003['llm_calls_per_burst']:.3f} -> "
            f"{chatbuffer['llm_calls_per_burst']:.3f})."]


def run(smoke: bool = False, out_dir: pathlib.Path | None = None) -> dict:
    conversations = SMOKE_CONVERSATIONS if smoke else FULL_CONVERSATIONS
    traffic = make_traffic(conversations, SEED)
    model = describe_model(SEED, conversations)
    model["observed"] = observed_traffic(traffic)
    results = [result_row(name, replay(policy, traffic)) for name, policy in POLICIES.items()]
    sweep_points = sweep(traffic, SMOKE_SWEEP_WINDOWS_S if smoke else FULL_SWEEP_WINDOWS_S)
    plot_path = plot(sweep_points, results, out_dir / "policies.png") if out_dir is not None else None
    return {
        "name": "policies",
        "model": model,
        "results": results,
        "sweep": sweep_points,
        "plot": str(plot_path) if plot_path is not None else None,
        "summary": summary_lines(results, model),
    }

