"""The adaptive end-of-turn policy on a real PostgreSQL: its decisions on hand-written cases, through
the store's ingest, and its Python twin (bench/adaptive.py, which the policy benchmark runs) held
to the SQL's answers on thousands of random inputs."""

from __future__ import annotations

import json
import random

import pytest

from bench.adaptive import TurnPolicy, next_typical_gap, turn_cue, turn_wait_seconds
from bench.traffic import TEXTS
from shared.config import BufferTiming
from shared.db.postgres import PostgresConnector
from shared.db.store import BufferStore
from shared.models import InboundMessage
from tests.conftest import FAST_TIMING
from tests.support.sql import execute, fetch

WINDOW = 30.0
TIMING = BufferTiming(buffer_window_seconds=WINDOW, buffer_max_age_seconds=300, buffer_policy="adaptive")
VOICE_NOTE = ({"file_type": "audio", "data_url": "https://chatwoot.example/voice.ogg"},)


@pytest.fixture
async def adaptive_store(database_url: str):
    store = BufferStore(PostgresConnector(database_url), TIMING)
    yield store
    await store.close()


async def wait_after(store: BufferStore, database_url: str, external_id: str, content: str | None,
                     conversation: str = "431", attachments: tuple = ()) -> float:
    """Seconds from the message's arrival to its burst's due time."""
    result = await store.ingest(InboundMessage("chatwoot", "3", conversation, external_id, content,
                                               attachments=attachments))
    (row,) = await fetch(database_url, "select extract(epoch from due_at - last_message_at)::float8 as wait"
                                       " from public.message_buffer where id = $1", result.buffer_id)
    return row["wait"]


async def test_a_lone_greeting_waits_two_thirds_of_the_window(adaptive_store: BufferStore, database_url: str) -> None:
    # More often than not, "hola" is followed by the question: it is not answered at once.
    assert await wait_after(adaptive_store, database_url, "m1", "Hola!") == pytest.approx(0.67 * WINDOW)


async def test_a_complete_question_waits_a_third(adaptive_store: BufferStore, database_url: str) -> None:
    assert await wait_after(adaptive_store, database_url, "m1", "¿Tienen estos tenis en talla 27?") == \
        pytest.approx(0.33 * WINDOW)


async def test_a_fragment_waits_the_whole_window(adaptive_store: BufferStore, database_url: str) -> None:
    assert await wait_after(adaptive_store, database_url, "m1", "quería preguntar si...") == pytest.approx(WINDOW)
    assert await wait_after(adaptive_store, database_url, "m2", "I wanted to ask about the", "432") == \
        pytest.approx(WINDOW)


async def test_a_voice_note_is_a_turn_of_its_own(adaptive_store: BufferStore, database_url: str) -> None:
    assert await wait_after(adaptive_store, database_url, "m1", None, attachments=VOICE_NOTE) == \
        pytest.approx(0.33 * WINDOW)


async def test_a_slow_typist_gets_longer_waits_in_this_burst_and_the_next(
        adaptive_store: BufferStore, database_url: str) -> None:
    assert await wait_after(adaptive_store, database_url, "m1", "busco unos tenis") == pytest.approx(0.67 * WINDOW)
    # The customer took 4.5 s for the next message: 1.5 times the 3 s reference pace.
    await execute(database_url, "update public.message_buffer set last_message_at = last_message_at - interval"
                                " '4.5 seconds', due_at = due_at + interval '1 minute'")
    assert await wait_after(adaptive_store, database_url, "m2", "en talla 27?") == \
        pytest.approx(0.33 * WINDOW * 1.5, rel=0.01)
    # The burst is answered; the conversation's next burst starts at the pace it learnt.
    await execute(database_url, "update public.message_buffer set status = 'completed', completed_at = now()")
    assert await wait_after(adaptive_store, database_url, "m3", "gracias") == pytest.approx(0.33 * WINDOW * 1.5, rel=0.01)
    # A much slower gap stretches the wait no further than slowest_pace (2).
    await execute(database_url, "update public.message_buffer set last_message_at = last_message_at - interval"
                                " '5 minutes', due_at = due_at + interval '10 minutes' where status = 'active'")
    assert await wait_after(adaptive_store, database_url, "m4", "otra cosa") == pytest.approx(0.67 * WINDOW * 2)


async def test_the_row_in_studio_wins_over_the_environment(adaptive_store: BufferStore, database_url: str) -> None:
    await execute(database_url, "update public.buffer_policy set policy = 'fixed'")
    assert await wait_after(adaptive_store, database_url, "m1", "¿Tienen talla 27?") == pytest.approx(WINDOW)
    await execute(database_url, "update public.buffer_policy set policy = 'adaptive', finished_share = 0.1")
    assert await wait_after(adaptive_store, database_url, "m2", "¿y en rojo?", "432") == pytest.approx(0.1 * WINDOW)


async def test_the_environment_default_is_the_fixed_window(store: BufferStore, database_url: str) -> None:
    result = await store.ingest(InboundMessage("chatwoot", "3", "431", "m1", "¿Tienen talla 27?"))
    (row,) = await fetch(database_url, "select extract(epoch from due_at - last_message_at)::float8 as wait"
                                       " from public.message_buffer where id = $1", result.buffer_id)
    assert row["wait"] == pytest.approx(FAST_TIMING.buffer_window_seconds)


async def test_a_bad_policy_value_is_refused_and_changes_nothing(database_url: str) -> None:
    for change in ("policy = 'smart'", "finished_share = 0", "plain_share = 1.5", "slowest_pace = 0.5"):
        with pytest.raises(Exception, match="check"):
            await execute(database_url, f"update public.buffer_policy set {change}")
    (row,) = await fetch(database_url, "select policy, finished_share, plain_share, slowest_pace from public.buffer_policy")
    assert (row["policy"], float(row["finished_share"]), float(row["plain_share"]), float(row["slowest_pace"])) == \
        (None, 0.33, 0.67, 2.0)


# --- the twin --------------------------------------------------------------------------------

SUFFIXES = ("", "?", "...", "…", ",", ":", " y", " and", " pero", "!", ".", " 👍", "  ", "\n", " si")
PREFIXES = ("", " ", "¡", "¿", "ok ", "hola ", "\t")
WORDS = [word for texts in TEXTS.values() for text in texts for word in text.split()] + \
    ["hola", "ok", "gracias", "si", "sí", "thanks", "a", "the", "de", "?", "...", ""]


def random_text(rng: random.Random) -> str | None:
    if rng.random() < 0.05:
        return None
    if rng.random() < 0.4:
        text = rng.choice([t for texts in TEXTS.values() for t in texts])
    else:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
    text = rng.choice(PREFIXES) + text + rng.choice(SUFFIXES)
    # Capitals only where every database locale folds them the same: ASCII.
    return "".join(c.upper() if c.isascii() and rng.random() < 0.2 else c for c in text)


def random_attachments(rng: random.Random) -> list[dict]:
    kinds = rng.choice([[], [], [], ["audio"], ["image"], ["image", "image"], ["file"], ["image", "audio"]])
    return [{"file_type": kind, "data_url": f"https://x.example/{i}"} for i, kind in enumerate(kinds)]


def random_policy(rng: random.Random) -> TurnPolicy:
    share = lambda: round(rng.uniform(0.05, 1.0), 2)  # noqa: E731 (four draws of one shape)
    return TurnPolicy(window_seconds=round(rng.uniform(1, 120), 1), finished_share=share(), plain_share=share(),
                      greeting_share=share(), unfinished_share=share(),
                      reference_gap_seconds=round(rng.uniform(0.5, 20), 1), slowest_pace=round(rng.uniform(1, 10), 1))


async def test_the_python_twin_decides_as_the_sql_does(database_url: str) -> None:
    rng = random.Random(11)
    compared = 0
    for _round in range(6):
        policy = random_policy(rng) if _round else TurnPolicy()
        await execute(database_url, "update public.buffer_policy set finished_share = $1, plain_share = $2,"
                      " greeting_share = $3, unfinished_share = $4, reference_gap_seconds = $5, slowest_pace = $6",
                      *(str(v) for v in (policy.finished_share, policy.plain_share, policy.greeting_share,
                                         policy.unfinished_share, policy.reference_gap_seconds, policy.slowest_pace)))
        inputs = [(random_text(rng), random_attachments(rng),
                   None if rng.random() < 0.3 else rng.lognormvariate(1, 1.5), rng.lognormvariate(1, 2) - 0.5)
                  for _ in range(1000)]
        rows = await fetch(
            database_url,
            "select public.turn_cue(x.content, x.attachments::jsonb) as cue,"
            "       public.turn_wait_seconds($5, public.turn_cue(x.content, x.attachments::jsonb), x.typical,"
            "           p.finished_share, p.plain_share, p.greeting_share, p.unfinished_share,"
            "           p.reference_gap_seconds, p.slowest_pace) as wait,"
            "       public.next_typical_gap(x.typical, x.gap) as next_gap"
            "  from unnest($1::text[], $2::text[], $3::float8[], $4::float8[]) with ordinality"
            "       as x(content, attachments, typical, gap, n), public.buffer_policy p order by x.n",
            [i[0] for i in inputs], [json.dumps(i[1]) for i in inputs], [i[2] for i in inputs],
            [i[3] for i in inputs], policy.window_seconds)
        for (content, attachments, typical, gap), row in zip(inputs, rows, strict=True):
            cue = turn_cue(content, attachments)
            assert row["cue"] == cue, (content, attachments)
            assert row["wait"] == pytest.approx(turn_wait_seconds(policy, cue, typical), rel=1e-12), (content, typical)
            assert row["next_gap"] == pytest.approx(next_typical_gap(typical, gap), rel=1e-12), (typical, gap)
            compared += 1
    assert compared == 6000
    # The inputs reached every cue, or the comparison proves less than it says.
    assert {turn_cue(random_text(rng), random_attachments(rng)) for _ in range(2000)} == \
        {"finished", "plain", "greeting", "unfinished"}


def test_the_twin_default_policy_is_the_tables_default() -> None:
    # Read from the migration, not retyped: a default changed in one place fails here.
    from pathlib import Path
    sql = (Path(__file__).resolve().parents[2] / "supabase/migrations/20261125000000_adaptive_end_of_turn.sql").read_text()
    defaults = TurnPolicy()
    for column in ("finished_share", "plain_share", "greeting_share", "unfinished_share",
                   "reference_gap_seconds", "slowest_pace"):
        line = next(line for line in sql.splitlines() if line.strip().startswith(column + " "))
        assert float(line.split("default")[1].split()[0]) == getattr(defaults, column), column


async def test_without_the_policy_row_the_window_is_fixed(adaptive_store: BufferStore, database_url: str) -> None:
    # The environment says adaptive, but the knobs are gone: the fixed window, never a null due time.
    await execute(database_url, "delete from public.buffer_policy")
    assert await wait_after(adaptive_store, database_url, "m1", "¿Tienen talla 27?") == pytest.approx(WINDOW)
