"""The Lambda entry points, driven with real API Gateway v2 and EventBridge event shapes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import json
import threading
from typing import Any, Coroutine, Iterator

import pytest
import uvicorn  # noqa: F401  (the fake Lambda API below runs on it)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.config import Settings
from tests.conftest import chatwoot_fixture, incoming, signed_headers
from tests.support.aws_events import LambdaContext, http_api_event, scheduled_event
from tests.support.far_side import FarSide, ServerThread
from tests.support.sql import buffers, execute, fetch, make_due, set_flag


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on a private loop in another thread: the handlers own this thread's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def lambda_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    env = {
        "DATABASE_URL": settings.database_url, "OPENAI_API_KEY": settings.openai_api_key,
        "OPENAI_BASE_URL": settings.openai_base_url, "OPENAI_MODEL": settings.openai_model,
        "CHATWOOT_BASE_URL": settings.chatwoot_base_url, "CHATWOOT_API_TOKEN": settings.chatwoot_api_token,
        "CHATWOOT_WEBHOOK_SECRET": settings.chatwoot_webhook_secret,
        "BUFFER_WINDOW_SECONDS": "5", "BUFFER_MAX_AGE_SECONDS": "60", "SWEEP_INTERVAL_SECONDS": "0.2",
        "SWEEP_LOOP_SECONDS": "1.5", "AWS_LAMBDA_FUNCTION_NAME": "chatbuffer-test-webhook",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    yield settings


@pytest.fixture
def webhook(lambda_env: Settings) -> Iterator[Any]:
    import functions.webhook

    module = importlib.reload(functions.webhook)
    loop = asyncio.get_event_loop()  # the container loop Mangum runs every invocation on
    yield module
    loop.run_until_complete(module.app.state.runtime.close())


@pytest.fixture
def sweeper(lambda_env: Settings) -> Iterator[Any]:
    import functions.sweeper

    module = importlib.reload(functions.sweeper)
    yield module
    if module._runtime is not None:
        module._runner.run(module._runtime.close())
    module._runner.close()


@pytest.mark.parametrize("base64_body", [False, True])
def test_webhook_handler_stores_a_signed_message(webhook: Any, database_url: str, base64_body: bool) -> None:
    body = json.dumps(chatwoot_fixture("message_created_incoming_text"), ensure_ascii=False).encode()
    event = http_api_event("POST", "/webhooks/chatwoot", body, signed_headers(body), base64_body=base64_body)
    response = webhook.handler(event, LambdaContext(10))
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"])["status"] == "buffered"
    (row,) = run(buffers(database_url))
    assert row["message_count"] == 1


def test_twilio_form_base64_under_api_gateway_is_verified_against_the_url_twilio_called(
        lambda_env: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twilio's form body arrives base64-encoded; its signature covers the public https URL, which
    the app rebuilds from API Gateway's host and forwarded scheme (no TWILIO_WEBHOOK_URL set)."""
    from urllib.parse import urlencode

    from shared.channels import twilio

    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "test-twilio-token")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "ACtest")
    import functions.webhook

    module = importlib.reload(functions.webhook)
    params = [("MessageSid", "SM1"), ("AccountSid", "ACtest"), ("From", "+14155550123"), ("To", "+14155550999"),
              ("Body", "¿Tienen talla 27?"), ("NumMedia", "0")]
    url = "https://abc123.execute-api.us-east-1.amazonaws.com/webhooks/twilio"
    body = urlencode(params).encode()

    def deliver(signed_url: str) -> dict[str, Any]:
        headers = {"content-type": "application/x-www-form-urlencoded",
                   "x-twilio-signature": twilio.sign("test-twilio-token", signed_url, params)}
        return module.handler(http_api_event("POST", "/webhooks/twilio", body, headers, base64_body=True),
                              LambdaContext(10))

    try:
        refused = deliver(url.replace("https://", "http://"))  # signed for another URL than Twilio called
        assert refused["statusCode"] == 401, refused
        accepted = deliver(url)
        assert accepted["statusCode"] == 200 and accepted["headers"]["content-type"].startswith("text/xml"), accepted
        rows = run(fetch(database_url, "select content from public.buffered_messages"))
        assert [r["content"] for r in rows] == ["¿Tienen talla 27?"]
    finally:
        asyncio.get_event_loop().run_until_complete(module.app.state.runtime.close())


def test_webhook_handler_refuses_a_bad_signature(webhook: Any, database_url: str) -> None:
    body = json.dumps(chatwoot_fixture("message_created_incoming_text")).encode()
    headers = signed_headers(body, secret="wrong")
    response = webhook.handler(http_api_event("POST", "/webhooks/chatwoot", body, headers), LambdaContext(10))
    assert response["statusCode"] == 401
    assert run(buffers(database_url)) == []


def test_webhook_health_and_warm_reuse(webhook: Any) -> None:
    for _ in range(3):  # one container, several invocations: the app and its pool are reused
        response = webhook.handler(http_api_event("GET", "/health"), LambdaContext(10))
        assert response["statusCode"] == 200


def test_scheduled_sweeper_answers_what_becomes_due_during_its_loop(
    sweeper: Any, lambda_env: Settings, far_side: FarSide, database_url: str
) -> None:
    from shared.runtime import Runtime

    async def arrange() -> None:
        runtime = Runtime(lambda_env)
        await runtime.store.ingest(parse(incoming(1, "Hola")))
        await runtime.store.ingest(parse(incoming(2, "¿talla 27?")))
        await runtime.close()
        # Due half a second into the loop, not at its start: the loop must wake for it.
        await execute(database_url, "update public.message_buffer set due_at = now() + interval '0.5 seconds'")

    run(arrange())
    result = sweeper.handler(scheduled_event(), LambdaContext(200))
    assert result == {"outcomes": {"completed": 1}}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola | ¿talla 27?"]


def test_sweeper_stops_claiming_when_the_timeout_is_near(sweeper: Any, far_side: FarSide, database_url: str) -> None:
    from shared.models import InboundMessage

    async def arrange() -> None:
        from shared.runtime import Runtime
        from shared.config import Settings as S

        runtime = Runtime(S(database_url=database_url))
        await runtime.store.ingest(InboundMessage("chatwoot", "3", "1", "x", "hi"))
        await runtime.close()
        await make_due(database_url)

    run(arrange())
    # 60 s left is less than the room a claimed buffer may need (4 model timeouts + 19 s).
    assert sweeper.handler(scheduled_event(), LambdaContext(60)) == {"outcomes": {}}
    assert far_side.replies == [] and run(buffers(database_url))[0]["status"] == "active"


class FakeLambdaApi:
    """TEST CODE: the Lambda Invoke API's far side: records asynchronous invocations."""

    def __init__(self) -> None:
        self.invocations: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def invoke(self, request: Request) -> Response:
        assert request.headers.get("x-amz-invocation-type") == "Event"
        with self.lock:
            self.invocations.append({"function": request.path_params["name"], "payload": json.loads(await request.body())})
        return JSONResponse({}, status_code=202)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/2015-03-31/functions/{name}/invocations", self.invoke, methods=["POST"])])


def test_fallback_on_lambda_invokes_the_sweeper_with_the_buffer_ids(
    webhook: Any, sweeper: Any, far_side: FarSide, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeLambdaApi()
    with ServerThread(fake.app()) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", server.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("SWEEPER_FUNCTION_NAME", "chatbuffer-test-sweeper")
        module = importlib.reload(webhook)
        run(set_flag(database_url, "buffer_sweeper", False))
        responses = []
        for n, text in enumerate(["Hola", "¿envían a Monterrey?"], start=1):
            body = json.dumps(incoming(n, text)).encode()
            responses.append(module.handler(http_api_event("POST", "/webhooks/chatwoot", body, signed_headers(body)),
                                            LambdaContext(10)))
    assert [json.loads(r["body"])["flush_now"] for r in responses] == [False, True]
    (invocation,) = fake.invocations
    assert invocation["function"] == "chatbuffer-test-sweeper"
    assert invocation["payload"]["buffer_ids"] == [json.loads(responses[1]["body"])["buffer_id"]]
    # What Lambda then does with that event: one pass, the flushed buffer first.
    assert sweeper.handler(invocation["payload"], LambdaContext(150)) == {"outcomes": {"completed": 1}}
    assert [r["body"]["content"] for r in far_side.replies] == ["echo: Hola | ¿envían a Monterrey?"]


def parse(payload: dict[str, Any]) -> Any:
    from shared.channels.chatwoot import parse_event

    return parse_event(json.dumps(payload).encode(), frozenset({"pending"}))


@pytest.fixture
def admin_lambda(lambda_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("ADMIN_TOKEN", "lambda-admin-token")
    import functions.admin

    module = importlib.reload(functions.admin)
    loop = asyncio.get_event_loop()
    yield module
    loop.run_until_complete(module.app.state.runtime.close())


def test_admin_function_serves_the_api_behind_its_token_and_the_page(admin_lambda: Any, webhook: Any) -> None:
    body = json.dumps(incoming(5, "Hola"), ensure_ascii=False).encode()
    assert webhook.handler(http_api_event("POST", "/webhooks/chatwoot", body, signed_headers(body)),
                           LambdaContext(10))["statusCode"] == 200
    stats = http_api_event("GET", "/admin/api/stats", headers={"authorization": "Bearer lambda-admin-token"})
    response = admin_lambda.handler(stats, LambdaContext(10))
    assert response["statusCode"] == 200 and json.loads(response["body"])["totals"]["waiting"] == 1
    refused = admin_lambda.handler(http_api_event("GET", "/admin/api/stats"), LambdaContext(10))
    assert refused["statusCode"] == 401
    page = admin_lambda.handler(http_api_event("GET", "/admin"), LambdaContext(10))
    assert page["statusCode"] == 200 and page["headers"]["content-type"].startswith("text/html")
    script = admin_lambda.handler(http_api_event("GET", "/admin/assets/admin.js"), LambdaContext(10))
    assert script["statusCode"] == 200 and "javascript" in script["headers"]["content-type"]
    assert admin_lambda.handler(http_api_event("GET", "/playground"), LambdaContext(10))["statusCode"] == 404


async def test_a_loop_no_webhook_can_wake_still_answers_a_new_burst_on_time(settings: Settings, far_side: FarSide) -> None:
    """The Lambda sweeper's situation: asleep with nothing due, a burst opens (stored by another
    process, the webhook's function). The loop never sleeps longer than the quiet window, so the
    reply leaves as the window ends, not at the next 10 s sweep interval."""
    import dataclasses
    import time as clock

    from shared.config import BufferTiming
    from shared.models import InboundMessage
    from shared.runtime import Runtime

    timing = BufferTiming(buffer_window_seconds=0.5, buffer_max_age_seconds=5, sweep_interval_seconds=10)
    sweeper_side, webhook_side = (Runtime(dataclasses.replace(settings, timing=timing)) for _ in range(2))
    loop = asyncio.create_task(sweeper_side.new_sweeper().run_until(clock.monotonic() + 4))
    await asyncio.sleep(1)  # the loop found nothing due and went to sleep
    stored_at = clock.monotonic()
    await webhook_side.store.ingest(InboundMessage("chatwoot", "3", "431", "m1", "Hola"))
    while not far_side.replies and clock.monotonic() - stored_at < 3:
        await asyncio.sleep(0.05)
    answered_after = clock.monotonic() - stored_at
    await loop
    for runtime in (sweeper_side, webhook_side):
        await runtime.close()
    assert far_side.replies and answered_after < 2.5, answered_after  # window 0.5 s, not the 10 s interval
