"""The adaptive end-of-turn policy, in Python: a twin of `public.turn_cue`,
`public.next_typical_gap` and `public.turn_wait_seconds` in
supabase/migrations/20261125000000_adaptive_end_of_turn.sql, for the simulation, which needs the
decision for every message of thousands of conversations without a database round trip.
tests/integration/test_end_of_turn.py holds the twin and the SQL to the same answers on thousands
of random inputs, so this copy cannot drift.

The wait after a message is a share of the window chosen by what the message looks like (its
*cue*), stretched for a customer slower than the reference pace:

* ``finished``: a question mark, a voice note, a closing word ("ok", "gracias"): a third;
* ``plain``: text that gives nothing away: two thirds;
* ``greeting``: "hola" alone, which is more often the start of a longer turn than a turn: two thirds;
* ``unfinished``: a trailing "...", ",", "and", or a photo without a caption: the whole window;
* times the customer's typical gap between messages of a turn (learnt over the conversation)
  over 3 s, between 1 and 2; within the usual max age and max count caps, and answered behind
  chatbuffer's fence (a newer message discards the draft and the burst waits again).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

AUDIO_MARK, IMAGE_MARK = "[audio]", "[image]"  # how a CSV trace writes media

# The same patterns as turn_cue in SQL, on the same lowered, trimmed text.
ENDS_UNFINISHED = re.compile(r"(\.\.\.|…|,|:|;|-)$")
ENDS_ON_A_LINK_WORD = re.compile(
    r"(^|\s)(y|o|pero|que|de|del|con|para|por|en|el|la|los|las|un|una|porque|and|or|but|the|a|an|to|with|"
    r"for|of|if|because|so|e|mas|com)$")
GREETING = re.compile(
    r"^[¡!¿ ]*(hola|holi|buenas|buen día|buen dia|buenos días|buenos dias|buenas tardes|buenas noches|hi|hello|"
    r"hey|good morning|good afternoon|good evening|ola|oi|olá|bom dia|boa tarde|boa noite)[ !.,?]*$")
CLOSING = re.compile(
    r"^(ok|okay|oki|vale|listo|perfecto|si|sí|yes|gracias|muchas gracias|thanks|thank you|thx|obrigado|obrigada|"
    r"de acuerdo|sounds good|great|genial|👍|🙏|🙂|😊)[ !.]*$")


@dataclass(frozen=True)
class TurnPolicy:
    """The columns of public.buffer_policy, with its defaults, and the window they are shares of.
    (``scale`` is the benchmark's: it multiplies the window to draw the policy's curve.)"""

    window_seconds: float = 30
    finished_share: float = 0.33
    plain_share: float = 0.67
    greeting_share: float = 0.67
    unfinished_share: float = 1.0
    reference_gap_seconds: float = 3
    slowest_pace: float = 2
    scale: float = 1.0


def has_file_type(attachments: Sequence[dict[str, Any]] | None, file_type: str) -> bool:
    return any(isinstance(a, dict) and a.get("file_type") == file_type for a in attachments or ())


def turn_cue(content: str | None, attachments: Sequence[dict[str, Any]] | None = None) -> str:
    if has_file_type(attachments, "audio"):
        return "finished"  # a voice note is a turn of its own
    text = (content or "").strip(" \t\r\n").lower()
    if not text:
        return "unfinished" if has_file_type(attachments, "image") else "plain"
    if ENDS_UNFINISHED.search(text) or ENDS_ON_A_LINK_WORD.search(text):
        return "unfinished"
    if GREETING.search(text):
        return "greeting"
    if text.endswith("?") or CLOSING.search(text):
        return "finished"
    return "plain"


def trace_message(text: str) -> tuple[str, list[dict[str, Any]]]:
    """A CSV trace's text as the webhook would store it: media marks become attachments."""
    if text.strip() == AUDIO_MARK:
        return "", [{"file_type": "audio"}]
    if text.strip().startswith(IMAGE_MARK):
        return text.strip()[len(IMAGE_MARK):].strip(), [{"file_type": "image"}]
    return text, []


def next_typical_gap(typical: float | None, gap: float) -> float:
    """The customer's typical gap one gap later: a geometric moving average, so one pause of
    minutes moves it no more than one quick reply."""
    gap = max(gap, 0.1)
    return gap if typical is None else math.sqrt(typical * gap)


def turn_wait_seconds(policy: TurnPolicy, cue: str, typical_gap: float | None) -> float:
    """The quiet time after a message (typical_gap: None while the customer's pace is unknown)."""
    share = {"finished": policy.finished_share, "greeting": policy.greeting_share,
             "unfinished": policy.unfinished_share}.get(cue, policy.plain_share)
    pace = 1.0 if typical_gap is None else typical_gap / policy.reference_gap_seconds
    return policy.window_seconds * policy.scale * share * min(max(pace, 1.0), policy.slowest_pace)
