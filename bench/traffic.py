"""Chat traffic for the buffering-policy benchmark: two seeded shapes, and traces read from CSV.

A conversation is the customer's messages in order (time, text) and, for each message, the index
of its *true burst*: the customer's turn, the ground truth a policy tries to recover.

Shapes
------
Both shapes share the turn structure of docs/benchmarks.md §5: turns per conversation geometric
(mean 5); turn size geometric (mean 3, so a third of the turns are one message); the customer
does not react to replies (open loop).

* ``phone`` (the benchmark's default, §5's traffic): gaps inside a turn lognormal, median 3 s,
  sigma 1 over all customers. Customers differ in pace: each conversation draws its own pace
  factor (lognormal, sigma 0.5) and its gaps have sigma 0.866 around it, so the pooled gaps keep
  §5's median 3 s and sigma 1 exactly. Gaps between turns: 60 s + exponential (mean 10 min).
* ``desk``: slower typists, as on desktop chat: the same, with a median gap of 30 s inside a turn
  and 180 s + exponential (mean 15 min) between turns.

Text
----
Each message's text is drawn from what it is in its turn (``MESSAGE_KINDS``): a lone message, the
first or a middle message of a longer turn, or a turn's last message. The shares were written down
from how people write to shops on WhatsApp *before* any policy was tuned on them, and they are
noisy as chats are: 12 % of the messages that are followed by more look finished ("do you have
these?" then "in size 27?"), 25 % of the turns end without any punctuation, and a greeting is more
often the start of a longer turn than a turn of its own.

``clarity`` (0..1) blends these shares with ``CLEAR_KINDS``, a world where text always tells: every
message followed by more is a greeting, a trailing fragment or a photo, and every turn ends with a
question, a voice note or a closing word. The benchmark uses it to show how clear the text of a
business's chats must be before a policy reading it pays (docs/benchmarks.md §5).

CSV traces
----------
``conversation,sender,timestamp,text`` with a header row; ``sender`` is ``customer`` or
``agent``; ``timestamp`` is seconds (any origin) or an ISO 8601 time; rows may come in any order.
A customer turn is the customer's messages between two agent messages. Media are written as text:
``[audio]`` for a voice note, ``[image]`` for a picture (a caption may follow). Agent rows only
mark where turns end; their text is not used.
"""
from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

SEED = 20240611
DAY_S = 86_400.0
MEAN_BURSTS_PER_CONVERSATION = 5.0
MEAN_BURST_SIZE = 3.0
GAP_SIGMA = 1.0            # pooled, over all customers
PACE_SIGMA = 0.5           # between customers
WITHIN_SIGMA = math.sqrt(GAP_SIGMA ** 2 - PACE_SIGMA ** 2)


@dataclass(frozen=True)
class Shape:
    name: str
    gap_median_s: float
    inter_gap_min_s: float
    inter_gap_mean_s: float


SHAPES = {
    "phone": Shape("phone", gap_median_s=3.0, inter_gap_min_s=60.0, inter_gap_mean_s=600.0),
    "desk": Shape("desk", gap_median_s=30.0, inter_gap_min_s=180.0, inter_gap_mean_s=900.0),
}

AUDIO, IMAGE = "[audio]", "[image]"

# What a message is, by its place in the turn: shares for (first or middle message of a longer
# turn, last message of a longer turn, lone message). A middle message is never a greeting.
MESSAGE_KINDS: dict[str, tuple[float, float, float]] = {
    "greeting":  (0.20, 0.00, 0.12),
    "trailing":  (0.20, 0.02, 0.01),
    "plain":     (0.32, 0.25, 0.22),
    "statement": (0.06, 0.06, 0.05),
    "question":  (0.12, 0.50, 0.40),
    "image":     (0.07, 0.02, 0.02),
    "voice":     (0.03, 0.10, 0.10),
    "closing":   (0.00, 0.05, 0.08),
}
CLEAR_KINDS: dict[str, tuple[float, float, float]] = {
    "greeting":  (0.25, 0.00, 0.00),
    "trailing":  (0.65, 0.00, 0.00),
    "image":     (0.10, 0.00, 0.00),
    "question":  (0.00, 0.70, 0.70),
    "voice":     (0.00, 0.15, 0.15),
    "closing":   (0.00, 0.15, 0.15),
}
TEXTS: dict[str, tuple[str, ...]] = {
    "greeting": ("hola", "Hola!", "buenas tardes", "Buenos días", "hi", "Hello", "buenas", "hey", "Good morning"),
    "trailing": ("quería preguntar si...", "tengo una duda,", "una pregunta:", "vi en su página que",
                 "y también", "I wanted to ask about", "so I was wondering if", "the ones in the photo and",
                 "pero", "necesito saber si"),
    "plain": ("quiero unos tenis negros", "busco el modelo de la foto", "necesito cambiar mi pedido",
              "cuanto cuesta", "tienen envío a monterrey", "I need to change my address", "en talla 27",
              "do you have them in red", "el pedido 4512", "es para regalo", "mañana en la tarde",
              "is it still available"),
    "statement": ("Compré unos tenis la semana pasada.", "Mi pedido es el 4512.", "I ordered on Monday.",
                  "No me ha llegado nada!", "The box arrived damaged.", "Vivo en Guadalajara."),
    "question": ("¿Tienen talla 27?", "en talla 27?", "cuánto cuesta el envío?", "Do you ship to Texas?",
                 "y en rojo?", "¿Cuándo llega mi pedido?", "can I pay by card?", "¿Abren el domingo?"),
    "image": (IMAGE,),
    "voice": (AUDIO,),
    "closing": ("ok", "gracias", "Gracias!", "perfecto", "ok thanks", "👍", "listo", "vale"),
}


@dataclass(frozen=True)
class Conversation:
    """The customer's arrival times in order, each message's text, and its true burst's index."""

    times: tuple[float, ...]
    burst_of: tuple[int, ...]
    texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.texts:  # a conversation given by its times only: nothing in the text
            object.__setattr__(self, "texts", ("",) * len(self.times))

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


def message_text(rng: random.Random, position: int, size: int, clarity: float) -> str:
    column = 2 if size == 1 else 1 if position == size - 1 else 0
    kinds = [k for k in MESSAGE_KINDS if not (k == "greeting" and column == 0 and position > 0)]
    weights = [(1 - clarity) * MESSAGE_KINDS[k][column] + clarity * CLEAR_KINDS.get(k, (0, 0, 0))[column]
               for k in kinds]
    return rng.choice(TEXTS[rng.choices(kinds, weights)[0]])


def make_conversation(rng: random.Random, text_rng: random.Random, shape: Shape,
                      clarity: float = 0.0) -> Conversation:
    times: list[float] = []
    burst_of: list[int] = []
    texts: list[str] = []
    now = rng.uniform(0.0, DAY_S)
    pace = rng.lognormvariate(0.0, PACE_SIGMA)
    for burst in range(geometric_at_least_one(rng, MEAN_BURSTS_PER_CONVERSATION)):
        if burst:
            # Shifted rather than clipped, so the mean stays exactly inter_gap_mean_s.
            now += shape.inter_gap_min_s + rng.expovariate(1.0 / (shape.inter_gap_mean_s - shape.inter_gap_min_s))
        size = geometric_at_least_one(rng, MEAN_BURST_SIZE)
        for position in range(size):
            if position:
                now += pace * rng.lognormvariate(math.log(shape.gap_median_s), WITHIN_SIGMA)
            times.append(now)
            burst_of.append(burst)
            texts.append(message_text(text_rng, position, size, clarity))
    return Conversation(tuple(times), tuple(burst_of), tuple(texts))


def make_traffic(conversations: int, seed: int = SEED, shape: str = "phone",
                 clarity: float = 0.0) -> list[Conversation]:
    # Text has its own stream, so the same seed gives the same arrival times at every clarity.
    rng, text_rng = random.Random(seed), random.Random(seed + 1)
    return [make_conversation(rng, text_rng, SHAPES[shape], clarity) for _ in range(conversations)]


def describe_shape(shape: str, seed: int, conversations: int, clarity: float = 0.0) -> dict[str, Any]:
    s = SHAPES[shape]
    return {
        "shape": shape, "seed": seed, "conversations": conversations, "clarity": clarity,
        "bursts_per_conversation": {"distribution": "geometric on 1,2,3,...", "mean": MEAN_BURSTS_PER_CONVERSATION},
        "burst_size_messages": {"distribution": "geometric on 1,2,3,...", "mean": MEAN_BURST_SIZE},
        "intra_burst_gap_s": {"distribution": "lognormal", "median": s.gap_median_s, "sigma": GAP_SIGMA,
                              "pace_sigma_between_customers": PACE_SIGMA},
        "inter_burst_gap_s": {"distribution": "minimum + exponential", "minimum": s.inter_gap_min_s,
                              "mean": s.inter_gap_mean_s},
        "message_kinds": {k: dict(zip(("first_or_middle", "last", "lone"), v)) for k, v in MESSAGE_KINDS.items()},
        "closed_loop": False,
    }


# --- CSV traces --------------------------------------------------------------------------------

CSV_FIELDS = ("conversation", "sender", "timestamp", "text")


class TraceError(ValueError):
    """A trace file that cannot be read, with the line that is wrong."""


def parse_timestamp(value: str, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise TraceError(f"line {line}: timestamp {value!r} is neither seconds nor an ISO 8601 time") from None


def read_trace(path: Path) -> list[Conversation]:
    """Customer turns from an exported chat log: a turn is the customer's messages between two agent messages."""
    rows: dict[str, list[tuple[float, int, str, str]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(CSV_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise TraceError(f"{path}: the header must name {', '.join(CSV_FIELDS)} (missing {', '.join(sorted(missing))})")
        for line, row in enumerate(reader, start=2):
            sender = (row["sender"] or "").strip().lower()
            if sender not in ("customer", "agent"):
                raise TraceError(f"line {line}: sender must be customer or agent, not {row['sender']!r}")
            rows.setdefault(row["conversation"], []).append(
                (parse_timestamp((row["timestamp"] or "").strip(), line), line, sender, row["text"] or ""))
    return [c for c in (turns_of(sorted(messages)) for messages in rows.values()) if c.times]


def turns_of(messages: Iterable[tuple[float, int, str, str]]) -> Conversation:
    times: list[float] = []
    burst_of: list[int] = []
    texts: list[str] = []
    burst, agent_since_last = -1, True
    for at, _line, sender, text in messages:
        if sender == "agent":
            agent_since_last = True
            continue
        if agent_since_last:
            burst, agent_since_last = burst + 1, False
        times.append(at)
        burst_of.append(burst)
        texts.append(text)
    return Conversation(tuple(times), tuple(burst_of), tuple(texts))


def write_trace(traffic: Sequence[Conversation], path: Path) -> Path:
    """A generated traffic as a CSV trace; an agent row after each turn marks where it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_FIELDS)
        for number, conversation in enumerate(traffic, start=1):
            for index, (at, text) in enumerate(zip(conversation.times, conversation.texts)):
                writer.writerow((number, "customer", f"{at:.3f}", text))
                last_of_turn = index + 1 == len(conversation.times) or \
                    conversation.burst_of[index + 1] != conversation.burst_of[index]
                if last_of_turn:
                    writer.writerow((number, "agent", f"{at + 1:.3f}", "(reply)"))
    return path
