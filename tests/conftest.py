from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
from hypothesis import settings as _hypothesis_settings

from shared.channels.chatwoot import sign
from shared.config import BufferTiming, Settings
from shared.db.postgres import PostgresConnector
from shared.db.store import BufferStore, Connector
from shared.db.supabase import SupabaseConnector
from shared.runtime import Runtime
from tests.support.database import DatabaseFactory, server_dsn
from tests.support.far_side import FarSide, ServerThread, start_far_side
from tests.support.postgrest_gateway import PostgrestGateway
from tests.support.webhook import Bot

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WEBHOOK_SECRET = "test-webhook-secret"
# Test keys of the PostgREST gateway: which database role a call runs as.
SERVICE_ROLE_KEY = "test-service-role-key"
ANON_KEY = "test-anon-key"
AUTHENTICATED_KEY = "test-authenticated-key"
GATEWAY_KEYS = {SERVICE_ROLE_KEY: "service_role", ANON_KEY: "anon", AUTHENTICATED_KEY: "authenticated"}

# For SQL tests that check computed due times.
FAST_TIMING = BufferTiming(buffer_window_seconds=0.3, buffer_max_age_seconds=3, buffer_max_messages=50,
                           sweep_interval_seconds=0.2, fallback_flush_messages=2, fallback_flush_age_seconds=1)
# For end-to-end tests: nothing becomes due by itself during a test; tests jump time with make_due().
APP_TIMING = BufferTiming(buffer_window_seconds=5, buffer_max_age_seconds=60, buffer_max_messages=50,
                          sweep_interval_seconds=0.2, fallback_flush_messages=2, fallback_flush_age_seconds=5)


def chatwoot_fixture(name: str) -> dict[str, Any]:
    """A captured Chatwoot 4.13 payload from tests/fixtures/chatwoot, delivered now: a message's
    `created_at` is moved to the last few minutes (a captured one would be older than
    STALE_MESSAGE_SECONDS), keeping the order the fixtures were captured in."""
    payload = json.loads((FIXTURES / "chatwoot" / f"{name}.json").read_text())
    if isinstance(payload.get("created_at"), str):
        captured = datetime.fromisoformat(payload["created_at"].replace("Z", "+00:00"))
        # A hundredth of the distance to the last capture: seconds apart become tens of ms apart.
        ago = (LAST_CAPTURE - captured).total_seconds() / 100
        payload["created_at"] = (datetime.now(timezone.utc) - timedelta(seconds=ago)).isoformat()
    return payload


LAST_CAPTURE = datetime(2026, 4, 20, 15, 10, tzinfo=timezone.utc)  # after every fixture's created_at


def signed_headers(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"content-type": "application/json", "x-chatwoot-timestamp": ts,
            "x-chatwoot-signature": sign(secret, ts, body)}


def incoming(message_id: int, content: str | None, conversation_id: int = 431, **overrides: Any) -> dict[str, Any]:
    """The shared incoming-text fixture with a new message id, text and conversation."""
    payload = chatwoot_fixture("message_created_incoming_text")
    payload.update(id=message_id, content=content, **overrides)
    payload["conversation"] = {**payload["conversation"], "id": conversation_id}
    return payload


@pytest.fixture(scope="session")
async def databases() -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(server_dsn())
    await factory.build_template()
    yield factory
    await factory.drop_all()


@pytest.fixture
async def database_url(databases: DatabaseFactory) -> AsyncIterator[str]:
    dsn = await databases.fresh()
    yield dsn
    await databases.drop(dsn)


@pytest.fixture
def gateway_url(database_url: str) -> Iterator[str]:
    """A PostgREST-compatible gateway (test code) in front of this test's database."""
    with ServerThread(PostgrestGateway(database_url, GATEWAY_KEYS).app()) as server:
        yield server.url


# The store contract suite: every test that takes `store` runs against both implementations.
@pytest.fixture(params=["postgres", "supabase"])
async def store(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[BufferStore]:
    connector: Connector
    if request.param == "postgres":
        connector = PostgresConnector(database_url)
    else:
        connector = SupabaseConnector(request.getfixturevalue("gateway_url"), SERVICE_ROLE_KEY)
    store = BufferStore(connector, FAST_TIMING)
    yield store
    await store.close()


@pytest.fixture(scope="session")
def far_side_server() -> Iterator[FarSide]:
    far, server = start_far_side()
    yield far
    server.__exit__(None, None, None)


@pytest.fixture
def far_side(far_side_server: FarSide) -> FarSide:
    far_side_server.reset()
    return far_side_server


@pytest.fixture
def settings(database_url: str, far_side: FarSide) -> Settings:
    return Settings(
        database_url=database_url,
        openai_api_key="test-openai-key",
        openai_base_url=f"{far_side.url}/v1",
        openai_model="fake-model",
        chatwoot_base_url=far_side.url,
        chatwoot_api_token="test-chatwoot-token",
        chatwoot_webhook_secret=WEBHOOK_SECRET,
        timing=APP_TIMING,
        retry_backoff_seconds=0.1,
        max_attempts=3,
        lease_seconds=40,
        sweep_token="test-sweep-token",
    )


@pytest.fixture
async def bot(settings: Settings) -> AsyncIterator[Bot]:
    """The app behind signed webhooks plus sweep passes, on one runtime (see tests/support/webhook.py)."""
    bot = Bot(Runtime(settings))
    yield bot
    await bot.close()


# Hypothesis: the same examples on every CI run (a failure found by chance locally is then kept in
# the test as an @example); random exploration everywhere else.
_hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")
