"""Claim -> model -> reply -> complete, against the fake far side over real HTTP."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from shared.config import Settings
from shared.models import InboundMessage
from shared.runtime import Runtime
from tests.support.far_side import FarSide
from tests.support.sql import buffers, execute, make_due, set_flag


def msg(external_id: str, content: str | None, conversation: str = "431") -> InboundMessage:
    return InboundMessage("chatwoot", "3", conversation, external_id, content)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings)
    yield runtime
    await runtime.close()


async def sweep(runtime: Runtime) -> dict[str, int]:
    return dict(await runtime.new_sweeper().run_once())


async def test_burst_gets_one_reply_with_every_message_in_order(
    runtime: Runtime, far_side: FarSide, database_url: str
) -> None:
    for i, text in enumerate(["Hola", "do you have these shoes?", "in size 27?"]):
        await runtime.store.ingest(msg(f"m{i}", text))
    assert await sweep(runtime) == {}  # not due yet: the customer may still be typing
    await make_due(database_url)
    assert await sweep(runtime) == {"completed": 1}
    (reply,) = far_side.replies
    assert reply["body"]["content"] == "echo: Hola | do you have these shoes? | in size 27?"
    assert (reply["account"], reply["conversation"]) == ("3", "431")
    assert reply["body"]["private"] is False and reply["body"]["message_type"] == "outgoing"
    (completion,) = far_side.completions
    assert completion["model"] == "fake-model"
    assert completion["messages"][0]["role"] == "system"
    assert [t["typing_status"] for t in far_side.typing] == ["on", "off"]
    (row,) = await buffers(database_url)
    assert row["status"] == "completed" and row["reply_content"] == reply["body"]["content"]


async def test_next_burst_sees_the_earlier_turn(runtime: Runtime, far_side: FarSide, database_url: str) -> None:
    await runtime.store.ingest(msg("m1", "Hola"))
    await make_due(database_url)
    await sweep(runtime)
    await runtime.store.ingest(msg("m2", "¿y a Monterrey?"))
    await make_due(database_url)
    await sweep(runtime)
    second = far_side.completions[1]["messages"]
    assert [(m["role"], m["content"]) for m in second[1:]] == [
        ("user", "Hola"), ("assistant", "echo: Hola"), ("user", "¿y a Monterrey?")]
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola", "echo: ¿y a Monterrey?"]


async def test_model_failure_retries_without_losing_the_burst(
    runtime: Runtime, far_side: FarSide, database_url: str
) -> None:
    far_side.fail_completions = 2  # the SDK retries once itself: one failed attempt of ours
    await runtime.store.ingest(msg("m1", "Hola"))
    await make_due(database_url)
    assert await sweep(runtime) == {"retry": 1}
    (row,) = await buffers(database_url)
    assert row["status"] == "processing" and "InternalServerError" in row["last_error"]
    assert far_side.replies == []
    await make_due(database_url)
    assert await sweep(runtime) == {"completed": 1}
    assert len(far_side.replies) == 1


async def test_chatwoot_failure_resends_the_same_reply_without_a_new_model_call(
    runtime: Runtime, far_side: FarSide, database_url: str
) -> None:
    far_side.fail_replies = 1
    await runtime.store.ingest(msg("m1", "Hola"))
    await make_due(database_url)
    assert await sweep(runtime) == {"retry": 1}
    await make_due(database_url)
    assert await sweep(runtime) == {"completed": 1}
    assert len(far_side.completions) == 1
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola"]


async def test_gives_up_after_max_attempts_with_the_error_kept(
    runtime: Runtime, far_side: FarSide, database_url: str
) -> None:
    far_side.fail_replies = 99
    await runtime.store.ingest(msg("m1", "Hola"))
    outcomes = []
    for _ in range(runtime.settings.max_attempts):
        await make_due(database_url)
        outcomes += list((await sweep(runtime)).keys())
    assert outcomes == ["retry", "retry", "failed"]
    (row,) = await buffers(database_url)
    assert row["status"] == "failed" and "500" in row["last_error"] and row["attempts"] == 3


async def test_typing_flag_off_sends_no_typing(runtime: Runtime, far_side: FarSide, database_url: str) -> None:
    await set_flag(database_url, "typing_indicators", False)
    await runtime.store.ingest(msg("m1", "Hola"))
    await make_due(database_url)
    await sweep(runtime)
    assert far_side.typing == [] and len(far_side.replies) == 1


async def test_lost_lease_sends_nothing(runtime: Runtime, far_side: FarSide, database_url: str) -> None:
    await runtime.store.ingest(msg("m1", "Hola"))
    await make_due(database_url)
    (claimed,) = await runtime.store.claim_due_buffers(1, 30)
    # Another worker reclaimed it meanwhile (our lease expired while the model was thinking).
    await execute(database_url, "update public.message_buffer set lease_token = gen_random_uuid()")
    from shared.models import RuntimeConfig

    outcome = await runtime.processor.process(claimed, RuntimeConfig(True, True, False, 1, None))
    assert outcome == "lease_lost" and far_side.replies == []
