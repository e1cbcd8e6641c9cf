"""The HTTP surface: where a message enters.

POST /webhooks/chatwoot verifies, reads and stores in one database call, and answers at once:
Chatwoot waits 5 s, and an agent-bot delivery that fails, times out or gets a 4xx hands the
customer to a human. So after a valid signature nothing is refused: a customer's message is
buffered, a human's message or a status change pauses or resumes the bot, an edit updates a
waiting message, and a body that cannot be read at all is kept as a dead letter for an operator.
No model or outbound call ever runs inside the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from shared.channels import chatwoot
from shared.config import ConfigError, Settings
from shared.db.errors import StoreError
from shared.models import ConversationSignal, InboundMessage, MessageEdit, ReplyEcho
from shared.runtime import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


class BodyTooLarge(Exception):
    """The request body is over 1 MB."""


def _reply(status_code: int, **body: Any) -> Response:
    # orjson, as for the body read: a third of the cost of Starlette's JSONResponse (1.2 vs 3.6 us).
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge
    return bytes(body)


def _authenticate(settings: Settings, request: Request, body: bytes) -> None:
    if settings.chatwoot_webhook_secret:
        chatwoot.verify_signature(
            settings.chatwoot_webhook_secret,
            request.headers.get("x-chatwoot-timestamp"),
            request.headers.get("x-chatwoot-signature"),
            body,
            now=time.time(),
        )
    elif settings.chatwoot_webhook_token:
        chatwoot.verify_token(settings.chatwoot_webhook_token, request.query_params.get("token"))


def _warn_if_open(settings: Settings) -> None:
    if not (settings.chatwoot_webhook_secret or settings.chatwoot_webhook_token):
        log.warning("!!! NEITHER CHATWOOT_WEBHOOK_SECRET NOR CHATWOOT_WEBHOOK_TOKEN IS SET: "
                    "/webhooks/chatwoot accepts unauthenticated requests from anyone !!!")


def create_app(runtime: Runtime | None = None, *, run_sweeper: bool = False, admin: bool = False,
               playground: bool = False) -> FastAPI:
    """The ASGI app. `chatbuffer serve` adds a sweep loop inside the process, the admin API and
    the inspector page (shared/web/admin.py), and the playground (shared/web/playground.py); the
    webhook's Lambda has none of them, so none is on its cold-start path."""
    runtime = runtime or Runtime(Settings.from_env())
    settings = runtime.settings
    _warn_if_open(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = runtime.new_sweeper() if run_sweeper else None
        task = asyncio.create_task(sweeper.run_until(float("inf"))) if sweeper else None
        app.state.sweeper = sweeper
        try:
            yield
        finally:
            if sweeper and task:
                sweeper.stop()
                await task
            await runtime.close()

    app = FastAPI(title="chatbuffer", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    app.state.sweeper = None

    # Handlers return Response objects: a typed return would make FastAPI build a response model,
    # which imports pydantic.v1 and costs ~30 ms of cold start.
    @app.get("/health")
    async def health() -> Response:
        return _reply(200, status="ok")

    async def chatwoot_webhook(request: Request) -> Response:
        try:
            body = await _read_body(request)
        except BodyTooLarge:
            return _reply(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            _authenticate(settings, request, body)
        except chatwoot.BadSignature as exc:
            log.warning("chatwoot webhook refused: %s", exc)
            return _reply(401, error=str(exc))
        try:
            event = chatwoot.parse_event(body, settings.chatwoot_answer_statuses)
            if isinstance(event, chatwoot.Ignored):
                return _reply(200, status="ignored", reason=event.reason)
            return await _store_event(request.app, runtime, event)
        except chatwoot.BadPayload as exc:
            return await _dead_letter(runtime, chatwoot.CHANNEL, str(exc), body)
        except (StoreError, ConfigError) as exc:
            if isinstance(exc, StoreError) and (exc.code or "").startswith("22"):
                # A data exception (SQLSTATE class 22): a retry would fail the same way.
                return await _dead_letter(runtime, chatwoot.CHANNEL, f"the database refused its data: {exc}", body)
            # 500 makes Chatwoot retry the delivery (it retries agent bots on 429 and 500 only).
            log.error("storing a chatwoot event failed: %s", exc)
            return _reply(500, error="could not store the event; retry")

    # A plain Starlette route: the handler reads the raw body itself (the signature covers the
    # exact bytes) and FastAPI has nothing to inject or validate. Skipping FastAPI's request
    # handling saves ~30 us per message, a tenth of the webhook's CPU (docs/benchmarks.md).
    app.add_route("/webhooks/chatwoot", chatwoot_webhook, methods=["POST"])

    @app.post("/sweep", status_code=202)
    async def sweep(request: Request) -> Response:
        """For an external cron (pg_cron + pg_net, a crontab): run a sweep pass off the request."""
        expected = settings.sweep_token
        if not expected:
            return _reply(403, error="set SWEEP_TOKEN to enable /sweep")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            chatwoot.verify_token(expected, given)
        except chatwoot.BadSignature:
            return _reply(401, error="missing or wrong bearer token")
        await runtime.dispatcher.dispatch([], fallback=False)
        return _reply(202, status="sweep started")

    if admin:
        from shared.web.admin import mount_admin

        async def wake_sweeper(buffer_ids: list[int]) -> None:
            """A burst an operator made due: the local loop looks now, or a pass is dispatched."""
            if app.state.sweeper is not None:
                app.state.sweeper.wake()
            else:
                await runtime.dispatcher.dispatch(buffer_ids)

        mount_admin(app, runtime, wake_sweeper)
    if playground:
        from shared.web.playground import mount_playground

        mount_playground(app, runtime)
    return app


async def _store_event(app: FastAPI, runtime: Runtime,
                       event: InboundMessage | ConversationSignal | MessageEdit | ReplyEcho
                       ) -> Response:
    """One database call per event; the kinds are the channel's (shared/channels/)."""
    store = runtime.store
    if isinstance(event, ConversationSignal):
        signal = await store.record_signal(event, runtime.settings.bot_pause_after_human_seconds)
        log.info("%s conversation %s: %s -> %s, %d waiting burst(s) cancelled",
                 event.channel, event.conversation_id, event.kind, signal.outcome, signal.cancelled)
        return _reply(200, status=signal.outcome, cancelled=signal.cancelled)
    if isinstance(event, ReplyEcho):  # our reply came back: it has left, whatever happens to its worker
        return _reply(200, status=f"echo {await store.record_reply_echo(event)}")
    if isinstance(event, MessageEdit):
        return _reply(200, status=f"edit {await store.edit_waiting_message(event)}")
    result = await store.ingest(event)
    if result.settings_error:
        log.error("%s", result.settings_error)
    if not result.accepted:
        return _reply(200, status="duplicate", buffer_id=result.buffer_id)
    if result.held_reason:
        return _reply(200, status="held", buffer_id=result.buffer_id, reason=result.held_reason)
    if runtime.metrics.enabled:  # on Lambda: one EMF line per stored message (it freezes after answering)
        runtime.metrics.count("MessagesIngested")
        runtime.metrics.flush(Function="webhook", channel=event.channel)
    await _after_ingest(app, runtime, result)
    return _reply(200, status="buffered", buffer_id=result.buffer_id, flush_now=result.flush_now)


async def _dead_letter(runtime: Runtime, channel: str, reason: str, body: bytes) -> Response:
    """A signed body we cannot read: kept for an operator and acknowledged, because a 4xx would
    make Chatwoot hand the customer to a human. If even that cannot be stored, 500: a retry."""
    try:
        dead_letter_id = await runtime.store.record_dead_letter(channel, reason, body)
    except StoreError as exc:
        log.error("unreadable %s webhook (%s) could not be kept: %s", channel, reason, exc)
        return _reply(500, error="could not store the event; retry")
    log.error("unreadable %s webhook kept as dead letter %s: %s", channel, dead_letter_id, reason)
    return _reply(200, status="unreadable", dead_letter_id=dead_letter_id, error=reason)


async def _after_ingest(app: FastAPI, runtime: Runtime, result: Any) -> None:
    """Get due work moving: wake the local sweep loop, or, with no scheduler, dispatch a pass."""
    sweeper = app.state.sweeper
    if sweeper is not None and result.due_at is not None:
        sweeper.note_due((result.due_at - datetime.now(timezone.utc)).total_seconds())
    if result.flush_now or result.others_due:
        try:
            await runtime.dispatcher.dispatch([result.buffer_id] if result.flush_now else [])
        except Exception:  # stored already: a later webhook or sweep will still answer it
            log.exception("fallback dispatch failed for buffer %s", result.buffer_id)
