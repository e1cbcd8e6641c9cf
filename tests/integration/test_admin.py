"""The admin API on the real database: the token, the reads, and the actions (each one SQL function,
recorded in admin_actions), including a retry answered exactly once while sweepers race."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, AsyncIterator

import httpx
import pytest

from shared.config import Settings
from shared.db.admin import AdminStore
from shared.db.supabase import SupabaseConnector
from shared.runtime import Runtime
from shared.web.app import create_app
from tests.conftest import SERVICE_ROLE_KEY, incoming
from tests.support.far_side import FarSide
from tests.support.sql import buffers, execute, fetch, make_due
from tests.support.webhook import Bot

TOKEN = "test-admin-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}", "x-admin-actor": "alice"}
CONVERSATION = "/admin/api/conversations/chatwoot/3/431"  # the fixture's account 3


class Admin:
    """The admin API over HTTP (the app as `chatbuffer serve` builds it, no sweep loop) beside a Bot."""

    def __init__(self, runtime: Runtime) -> None:
        self.app = create_app(runtime, admin=True)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, body: Any = None, expect: int = 200) -> Any:
        response = await self.client.post(path, json=body, headers=AUTH)
        assert response.status_code == expect, response.text
        return response.json()

    async def settle(self) -> None:
        """Wait for the sweep pass an action dispatched (no loop runs here, so one is dispatched)."""
        await self.app.state.runtime.dispatcher.wait_idle()


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, admin_token=TOKEN)


@pytest.fixture
async def admin(admin_settings: Settings) -> AsyncIterator[Admin]:
    runtime = Runtime(admin_settings)
    admin = Admin(runtime)
    yield admin
    await admin.settle()
    await admin.client.aclose()
    await runtime.close()


@pytest.fixture
async def customer(admin_settings: Settings) -> AsyncIterator[Bot]:
    bot = Bot(Runtime(admin_settings))
    yield bot
    await bot.close()


async def fail_for_good(bot: Bot, far_side: FarSide, database_url: str, attempts: int = 3) -> int:
    """A burst whose reply Chatwoot refuses on every attempt: it ends failed with its errors."""
    assert await bot.status_of(incoming(1, "Hola")) == "buffered"
    far_side.fail_replies = attempts
    for _ in range(attempts):
        await make_due(database_url)
        await bot.sweep()
    (row,) = await buffers(database_url)
    assert row["status"] == "failed", row
    return int(row["id"])


async def audit(database_url: str) -> list[dict[str, Any]]:
    return await fetch(database_url, "select actor, via, action, buffer_id, conversation_id, outcome"
                                     " from public.admin_actions order by id")


# --- the token ---------------------------------------------------------------------------------

async def test_the_admin_api_is_off_without_a_token_and_wants_the_right_bearer(settings: Settings) -> None:
    off = Admin(Runtime(settings))  # no ADMIN_TOKEN
    response = await off.client.get("/admin/api/stats", headers={"authorization": "Bearer anything"})
    assert response.status_code == 404 and "ADMIN_TOKEN" in response.json()["error"]

    on = Admin(Runtime(dataclasses.replace(settings, admin_token=TOKEN)))
    for headers in ({}, {"authorization": "Bearer wrong-token"}, {"authorization": TOKEN},
                    {"authorization": f"Basic {TOKEN}"}, {"authorization": f"Bearer {TOKEN}x"}):
        response = await on.client.get("/admin/api/stats", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        retry = await on.client.post("/admin/api/bursts/1/retry", headers=headers)
        assert retry.status_code == 401
    response = await on.client.get("/admin/api/stats", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.json()["totals"]["waiting"] == 0
    for client in (off, on):
        await client.client.aclose()
        await client.app.state.runtime.close()


async def test_the_webhook_app_has_no_admin_routes(settings: Settings) -> None:
    """The webhook's Lambda builds create_app() without them: nothing of the admin is loaded."""
    app = create_app(Runtime(dataclasses.replace(settings, admin_token=TOKEN)))
    paths = {getattr(route, "path", "") for route in app.routes}
    assert not any(path.startswith(("/admin", "/playground")) for path in paths), paths


# --- reads ----------------------------------------------------------------------------------------

async def test_stats_list_and_detail_show_what_waits_what_failed_and_what_it_cost(
        admin: Admin, customer: Bot, far_side: FarSide, database_url: str) -> None:
    failed_id = await fail_for_good(customer, far_side, database_url)
    far_side.fail_replies = 0
    assert await customer.status_of(incoming(2, "¿Siguen ahí?", conversation_id=432)) == "buffered"
    assert await customer.status_of(incoming(3, "Hola", conversation_id=433)) == "buffered"
    await make_due(database_url)
    assert await customer.sweep() == {"completed": 2}
    assert await customer.status_of(incoming(4, "otra cosa", conversation_id=433)) == "buffered"

    stats = await admin.get("/admin/api/stats")
    totals = stats["totals"]
    assert (totals["waiting"], totals["failed"], totals["failed_24h"], totals["completed"]) == (1, 1, 1, 2)
    # The failed burst's reply was written once and kept as a draft across its attempts.
    assert totals["model_calls"] == 3 and totals["discarded_drafts"] == 0
    assert totals["replies_last_hour"] == 2 and totals["lateness_p50_seconds"] is not None
    assert 0 <= totals["lateness_p50_seconds"] <= totals["lateness_p95_seconds"] < 30
    assert [c["channel"] for c in stats["channels"]] == ["chatwoot"]
    assert stats["settings"]["window_seconds"] == 5

    failed = await admin.get("/admin/api/bursts", state="failed")
    assert [b["id"] for b in failed["bursts"]] == [failed_id]
    assert "500" in failed["bursts"][0]["last_error"] and failed["bursts"][0]["preview"] == "Hola"
    waiting = (await admin.get("/admin/api/bursts", state="active"))["bursts"]
    assert [(b["conversation_id"], b["state"]) for b in waiting] == [("433", "active")]
    assert waiting[0]["max_age_at"] > waiting[0]["due_at"]

    first_page = await admin.get("/admin/api/bursts", limit=2)
    second_page = await admin.get("/admin/api/bursts", limit=2, before=first_page["next_before"])
    ids = [b["id"] for b in first_page["bursts"] + second_page["bursts"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 4 and second_page["next_before"] is None
    only_433 = await admin.get("/admin/api/bursts", conversation_id="433")
    assert {b["conversation_id"] for b in only_433["bursts"]} == {"433"} and len(only_433["bursts"]) == 2

    detail = await admin.get(f"/admin/api/bursts/{failed_id}")
    assert [m["content"] for m in detail["messages"]] == ["Hola"]
    assert [e["attempt"] for e in detail["attempt_errors"]] == [1, 2, 3]
    assert detail["reply"] == "echo: Hola"  # the draft that never left
    answered = (await admin.get("/admin/api/bursts", state="completed", conversation_id="433"))["bursts"][0]
    latest = (await admin.get("/admin/api/bursts", state="active", conversation_id="433"))["bursts"][0]
    later = await admin.get(f"/admin/api/bursts/{latest['id']}")
    assert [(h["id"], h["reply"]) for h in later["history"]] == [(answered["id"], "echo: Hola")]


async def test_bad_requests_get_clear_errors_and_change_nothing(admin: Admin, customer: Bot,
                                                                database_url: str) -> None:
    assert await customer.status_of(incoming(1, "Hola")) == "buffered"
    before = await buffers(database_url)
    for path, params in (("/admin/api/bursts", {"state": "bogus"}), ("/admin/api/bursts", {"limit": "0"}),
                         ("/admin/api/bursts", {"limit": "500"}), ("/admin/api/bursts", {"before": "x"})):
        response = await admin.client.get(path, params=params, headers=AUTH)
        assert response.status_code == 400 and response.json()["error"], (params, response.text)
    assert (await admin.client.get("/admin/api/bursts/999999", headers=AUTH)).status_code == 404
    assert (await admin.client.get("/admin/api/bursts/abc", headers=AUTH)).status_code == 400
    assert (await admin.client.post("/admin/api/bursts/999999/retry", headers=AUTH)).status_code == 404
    for body in ({"seconds": -5}, {"seconds": "soon"}, {"seconds": True}, [1]):
        response = await admin.client.post(f"{CONVERSATION}/pause", json=body, headers=AUTH)
        assert response.status_code == 400, body
    response = await admin.client.post(f"{CONVERSATION}/pause", content=b"{not json", headers=AUTH)
    assert response.status_code == 400
    assert await buffers(database_url) == before
    assert await audit(database_url) == []


# --- actions ----------------------------------------------------------------------------------

async def test_a_retried_failed_burst_is_answered_exactly_once_while_sweepers_race(
        admin: Admin, customer: Bot, far_side: FarSide, database_url: str, admin_settings: Settings) -> None:
    failed_id = await fail_for_good(customer, far_side, database_url)
    assert far_side.public_replies() == []
    far_side.fail_replies = 0

    # Three sweepers on their own connections loop while two operators click "retry" at once.
    racers = [Runtime(admin_settings) for _ in range(3)]
    sweepers = [runtime.new_sweeper() for runtime in racers]
    loops = [asyncio.create_task(s.run_until(time.monotonic() + 3)) for s in sweepers]
    await asyncio.sleep(0.2)
    clicks = await asyncio.gather(admin.post(f"/admin/api/bursts/{failed_id}/retry"),
                                  admin.post(f"/admin/api/bursts/{failed_id}/retry"))
    assert sorted(c["outcome"] for c in clicks) == ["not_failed", "retried"]
    await admin.settle()
    await asyncio.gather(*loops)
    for runtime in racers:
        await runtime.close()

    assert [r["body"]["content"] for r in far_side.public_replies()] == ["echo: Hola"]
    (row,) = await buffers(database_url)
    assert (row["status"], row["outcome"], row["model_calls"]) == ("completed", "replied", 1)  # the kept draft
    assert await audit(database_url) == [
        {"actor": "alice", "via": "api", "action": "retry", "buffer_id": failed_id, "conversation_id": "431",
         "outcome": outcome} for outcome in ("retried", "not_failed")]
    # Retrying what is not failed changes nothing.
    assert (await admin.post(f"/admin/api/bursts/{failed_id}/retry"))["outcome"] == "not_failed"
    assert len(far_side.public_replies()) == 1


async def test_answer_now_flushes_the_waiting_burst(admin: Admin, customer: Bot, far_side: FarSide,
                                                    database_url: str) -> None:
    assert await customer.status_of(incoming(1, "Hola")) == "buffered"
    assert await customer.status_of(incoming(2, "¿tienen talla 27?")) == "buffered"
    result = await admin.post(f"{CONVERSATION}/answer-now")
    assert result["outcome"] == "answering"
    await admin.settle()  # the dispatched pass answers it: the 5 s window was not waited for
    assert [r["body"]["content"] for r in far_side.public_replies()] == ["echo: Hola | ¿tienen talla 27?"]
    assert (await admin.post(f"{CONVERSATION}/answer-now"))["outcome"] == "nothing_waiting"
    assert [a["outcome"] for a in await audit(database_url)] == ["answering", "nothing_waiting"]


async def test_cancel_drops_what_waits_and_the_bot_answers_the_next_message(
        admin: Admin, customer: Bot, far_side: FarSide, database_url: str) -> None:
    assert await customer.status_of(incoming(1, "mensaje de prueba")) == "buffered"
    assert (await admin.post(f"{CONVERSATION}/cancel")) == {"outcome": "cancelled", "cancelled": 1}
    (row,) = await buffers(database_url)
    assert (row["status"], row["cancel_reason"]) == ("cancelled", "cancelled by alice")
    assert (await admin.post(f"{CONVERSATION}/cancel"))["outcome"] == "nothing_waiting"

    assert await customer.status_of(incoming(2, "Hola")) == "buffered"
    await make_due(database_url)
    assert await customer.sweep() == {"completed": 1}
    assert len(far_side.public_replies()) == 1


async def test_pause_holds_new_messages_until_resume(admin: Admin, customer: Bot, far_side: FarSide,
                                                     database_url: str) -> None:
    assert await customer.status_of(incoming(1, "Hola")) == "buffered"
    paused = await admin.post(f"{CONVERSATION}/pause", {"seconds": None})
    assert paused["outcome"] == "paused" and paused["cancelled"] == 1
    assert await customer.status_of(incoming(2, "¿hola?")) == "held"
    state = (await admin.get(CONVERSATION))
    assert state["paused"] is True and state["pause_reason"] == "paused by alice"

    assert (await admin.post(f"{CONVERSATION}/resume"))["outcome"] == "resumed"
    assert (await admin.post(f"{CONVERSATION}/resume"))["outcome"] == "not_paused"
    assert await customer.status_of(incoming(3, "¿me ayudan?")) == "buffered"
    await make_due(database_url)
    assert await customer.sweep() == {"completed": 1}
    assert len(far_side.public_replies()) == 1
    assert [(a["action"], a["outcome"]) for a in await audit(database_url)] == [
        ("pause", "paused"), ("resume", "resumed"), ("resume", "not_paused")]


async def test_a_pause_stops_a_reply_being_written(admin: Admin, customer: Bot, far_side: FarSide,
                                                   database_url: str) -> None:
    """A burst a worker holds is not cancelled by `cancel`, but a pause stops it at the fence."""
    assert await customer.status_of(incoming(1, "Hola")) == "buffered"
    await make_due(database_url)
    far_side.openai_latency = 0.8
    sweep = asyncio.create_task(customer.sweep())
    await asyncio.sleep(0.3)
    assert (await admin.post(f"{CONVERSATION}/cancel"))["outcome"] == "nothing_waiting"
    assert (await admin.post(f"{CONVERSATION}/pause", {"seconds": 600}))["outcome"] == "paused"
    assert await sweep == {"cancelled": 1}
    assert far_side.public_replies() == []


async def test_a_failed_burst_already_covered_by_a_newer_reply_is_not_retried(
        admin: Admin, customer: Bot, far_side: FarSide, database_url: str) -> None:
    """The newer reply had the failed burst's messages in its history: a late answer would be stale."""
    failed_id = await fail_for_good(customer, far_side, database_url)
    far_side.fail_replies = 0
    assert await customer.status_of(incoming(2, "¿hola?")) == "buffered"
    await make_due(database_url)
    assert await customer.sweep() == {"completed": 1}
    assert "Hola" in far_side.completions[-1]["messages"][-2]["content"]  # in the newer reply's history
    before = await buffers(database_url)
    result = await admin.post(f"/admin/api/bursts/{failed_id}/retry")
    assert (result["outcome"], result["status"]) == ("superseded", "failed")
    assert await buffers(database_url) == before
    assert len(far_side.public_replies()) == 1
    assert [a["outcome"] for a in await audit(database_url)] == ["superseded"]


async def test_a_failed_burst_is_not_retried_while_the_bot_is_paused(
        admin: Admin, customer: Bot, far_side: FarSide, database_url: str) -> None:
    failed_id = await fail_for_good(customer, far_side, database_url)
    await admin.post(f"{CONVERSATION}/pause", {"seconds": 600})
    assert (await admin.post(f"/admin/api/bursts/{failed_id}/retry"))["outcome"] == "bot_paused"
    await admin.post(f"{CONVERSATION}/resume")
    assert (await admin.post(f"/admin/api/bursts/{failed_id}/retry"))["outcome"] == "retried"


async def test_answer_now_also_hurries_a_burst_waiting_to_retry(
        admin: Admin, customer: Bot, far_side: FarSide, database_url: str) -> None:
    """The conversation's older burst, in its backoff, would hold the open one back: both become due."""
    assert await customer.status_of(incoming(1, "Hola")) == "buffered"
    far_side.fail_replies = 1
    await make_due(database_url)
    assert await customer.sweep() == {"retry": 1}
    await execute(database_url, "update public.message_buffer set due_at = now() + interval '1 hour'")
    assert await customer.status_of(incoming(2, "¿siguen ahí?")) == "buffered"
    retrying, waiting = await buffers(database_url)
    result = await admin.post(f"{CONVERSATION}/answer-now")
    assert (result["outcome"], result["buffer_id"]) == ("answering", retrying["id"])
    await admin.settle()  # the older one goes first; its fence takes the newer message in (merged)
    await make_due(database_url)
    await customer.sweep()
    assert [r["body"]["content"] for r in far_side.public_replies()] == ["echo: Hola | ¿siguen ahí?"]


async def test_the_actor_name_may_be_any_script(admin: Admin, customer: Bot, database_url: str) -> None:
    assert await customer.status_of(incoming(1, "Hola")) == "buffered"
    response = await admin.client.post(f"{CONVERSATION}/cancel",
                                       headers={**AUTH, "x-admin-actor": "%C5%81ukasz%20%E5%BC%A0%E4%BC%9F"})
    assert response.status_code == 200
    assert (await fetch(database_url, "select actor from public.admin_actions"))[0]["actor"] == "Łukasz 张伟"


# --- the same functions through Supabase's Data API ---------------------------------------------------

async def test_the_admin_store_works_through_the_data_api(gateway_url: str, customer: Bot, far_side: FarSide,
                                                          database_url: str, admin_settings: Settings) -> None:
    failed_id = await fail_for_good(customer, far_side, database_url)
    store = AdminStore(SupabaseConnector(gateway_url, SERVICE_ROLE_KEY), admin_settings.timing)
    try:
        assert (await store.stats())["totals"]["failed"] == 1
        (listed,) = await store.list_bursts(state="failed")
        assert listed["id"] == failed_id
        assert (await store.burst(failed_id))["messages"][0]["content"] == "Hola"
        assert (await store.retry(failed_id, "bob", "cli"))["outcome"] == "retried"
        assert (await store.pause("chatwoot", "3", "431", 60, "bob", "cli"))["outcome"] == "paused"
        assert (await store.conversation("chatwoot", "3", "431"))["paused"] is True
    finally:
        await store._connector.close()
    assert [(a["actor"], a["via"], a["action"]) for a in await audit(database_url)] == [
        ("bob", "cli", "retry"), ("bob", "cli", "pause")]


async def test_the_audit_trail_cannot_be_edited_by_the_backend_role(database_url: str) -> None:
    await execute(database_url, "select public.record_admin_action('x', 'api', 'retry', 1, 'c', 'a', 'v', 'retried', null)")
    rows = await fetch(database_url, "select has_table_privilege('service_role', 'public.admin_actions', 'update')"
                                     " as can_update, has_table_privilege('service_role', 'public.admin_actions',"
                                     " 'delete') as can_delete")
    assert rows == [{"can_update": False, "can_delete": False}]
