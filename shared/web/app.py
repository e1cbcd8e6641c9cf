"""The HTTP surface: where a message enters.

POST /webhooks/<channel> verifies the raw bytes, reads them with the channel's adapter
(shared/channels/<channel>.py) and stores each event in one database call, and answers at once:
Chatwoot waits 5 s (and hands the customer to a human on a 4xx or a timeout), Twilio 15 s, and Meta
redelivers anything but a 200 for days. So after a valid signature nothing is refused: a
customer's message is buffered (or kept as history when it is stale: STALE_MESSAGE_SECONDS), a
human's message or a status change pauses or resumes the bot, an edit updates a waiting message,
and a body that cannot be read at all is kept as a dead letter for an operator. No model or
outbound call ever runs inside the request.

Chatwoot's route is always there. WhatsApp's (/webhooks/whatsapp), Messenger and Instagram's
(/webhooks/meta) and Twilio's (/webhooks/twilio) exist only when their settings are set: otherwise
they answer 404 and their adapters are never imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timezone
from types import ModuleType
from typing import Any, AsyncIterator, Sequence

import orjson
from fastapi import FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from shared.channels import chatwoot
from shared.channels.base import BadPayload, BadSignature, Ignored, WebhookRequest
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

    for adapter in _channels(settings):
        _mount_channel(app, runtime, adapter)

    @app.post("/sweep", status_code=202)
    async def sweep(request: Request) -> Response:
        """For an external cron (pg_cron + pg_net, a crontab): run a sweep pass off the request."""
        expected = settings.sweep_token
        if not expected:
            return _reply(403, error="set SWEEP_TOKEN to enable /sweep")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            chatwoot.verify_token(expected, given)
        except BadSignature:
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


def _channels(settings: Settings) -> list[ModuleType]:
    """The adapters whose settings are set: only these are imported."""
    adapters = [chatwoot]
    if settings.whatsapp_verify_token:
        from shared.channels import whatsapp

        adapters.append(whatsapp)
    if settings.meta_verify_token:
        from shared.channels import meta

        adapters.append(meta)
    if settings.twilio_auth_token:
        from shared.channels import twilio

        adapters.append(twilio)
    return adapters


def _mount_channel(app: FastAPI, runtime: Runtime, adapter: ModuleType) -> None:
    """POST /webhooks/<name> (and Meta's GET handshake) for one channel's adapter. A plain
    Starlette route: the handler reads the raw body itself (the signature covers the exact bytes)
    and FastAPI has nothing to inject or validate; skipping its request handling saves ~30 us per
    message, a tenth of the webhook's CPU (docs/benchmarks.md)."""
    settings = runtime.settings
    name = adapter.__name__.rsplit(".", 1)[-1]
    # The platform's fixed answer (Twilio's TwiML), or JSON saying what became of the delivery.
    fixed = getattr(adapter, "ACKNOWLEDGEMENT", None)

    def acknowledge(status_code: int, **answer: Any) -> Response:
        if fixed is None:
            return _reply(status_code, **answer)
        log.debug("%s webhook: %s %s", name, status_code, answer)
        return Response(fixed[0], status_code=status_code, media_type=fixed[1])

    async def webhook(request: Request) -> Response:
        try:
            body = await _read_body(request)
        except BodyTooLarge:
            return _reply(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            adapter.verify(settings, WebhookRequest(body, request.headers, request.query_params, str(request.url)))
        except BadSignature as exc:
            log.warning("%s webhook refused: %s", name, exc)
            return _reply(401, error=str(exc))
        try:
            events = adapter.parse(settings, body)
            status, answer = await _store_events(request.app, runtime, events)
        except BadPayload as exc:
            status, answer = await _dead_letter(runtime, name, str(exc), body)
        except (StoreError, ConfigError) as exc:
            if isinstance(exc, StoreError) and (exc.code or "").startswith("22"):
                # A data exception (SQLSTATE class 22): a retry would fail the same way.
                status, answer = await _dead_letter(runtime, name, f"the database refused its data: {exc}", body)
            else:
                # 500: the platform retries the delivery (Chatwoot on 429 and 500 only); what was
                # stored of it already is a duplicate then.
                log.error("storing a %s event failed: %s", name, exc)
                status, answer = 500, {"error": "could not store the event; retry"}
        return acknowledge(status, **answer)

    app.add_route(f"/webhooks/{name}", webhook, methods=["POST"])
    if hasattr(adapter, "handshake"):
        async def handshake(request: Request) -> Response:
            """Meta's check when the webhook is saved in its console: the bare challenge, or 403."""
            try:
                return PlainTextResponse(adapter.handshake(settings, request.query_params))
            except BadSignature as exc:
                log.warning("%s webhook handshake refused: %s", name, exc)
                return _reply(403, error=str(exc))

        app.add_route(f"/webhooks/{name}", handshake, methods=["GET"])


async def _store_events(app: FastAPI, runtime: Runtime, events: Sequence[Any]) -> tuple[int, dict[str, Any]]:
    """Each event of a delivery, in order (Meta batches several). One event answers as itself;
    several as a list. A failure stops here and asks for the whole delivery again."""
    results = []
    for event in events:
        if isinstance(event, Ignored):
            results.append({"status": "ignored", "reason": event.reason})
        else:
            results.append(await _store_event(app, runtime, event))
    if len(results) == 1:
        return 200, results[0]
    if not results:
        return 200, {"status": "ignored", "reason": "nothing for the bot in this delivery"}
    return 200, {"status": "batch", "results": results}


async def _store_event(app: FastAPI, runtime: Runtime,
                       event: InboundMessage | ConversationSignal | MessageEdit | ReplyEcho) -> dict[str, Any]:
    """One database call per event; the kinds are the channels' (shared/channels/)."""
    store = runtime.store
    if isinstance(event, ConversationSignal):
        signal = await store.record_signal(event, runtime.settings.bot_pause_after_human_seconds)
        log.info("%s conversation %s: %s -> %s, %d waiting burst(s) cancelled",
                 event.channel, event.conversation_id, event.kind, signal.outcome, signal.cancelled)
        return {"status": signal.outcome, "cancelled": signal.cancelled}
    if isinstance(event, ReplyEcho):  # our reply came back: it has left, whatever happens to its worker
        return {"status": f"echo {await store.record_reply_echo(event)}"}
    if isinstance(event, MessageEdit):
        return {"status": f"edit {await store.edit_waiting_message(event)}"}
    stale = _stale_reason(event, runtime.settings.stale_message_seconds)
    result = await (store.store_stale(event, stale) if stale else store.ingest(event))
    if result.settings_error:
        log.error("%s", result.settings_error)
    if not result.accepted:
        return {"status": "duplicate", "buffer_id": result.buffer_id}
    if result.held_reason:
        if stale:
            log.warning("%s message kept as history, not answered: %s", event.channel, stale)
        return {"status": "stale" if stale else "held", "buffer_id": result.buffer_id, "reason": result.held_reason}
    if runtime.metrics.enabled:  # on Lambda: one EMF line per stored message (it freezes after answering)
        runtime.metrics.count("MessagesIngested")
        runtime.metrics.flush(Function="webhook", channel=event.channel)
    await _after_ingest(app, runtime, result)
    return {"status": "buffered", "buffer_id": result.buffer_id, "flush_now": result.flush_now}


def _stale_reason(message: InboundMessage, limit_seconds: float) -> str | None:
    """Why a message is too old to answer (a platform's redelivery after an outage), or None."""
    if message.sent_at is None:
        return None
    age = (datetime.now(timezone.utc) - message.sent_at).total_seconds()
    if age <= limit_seconds:
        return None
    return f"stale: sent {age / 60:.0f} min before it arrived (STALE_MESSAGE_SECONDS={limit_seconds:g})"


async def _dead_letter(runtime: Runtime, channel: str, reason: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """A signed body we cannot read: kept for an operator and acknowledged, because a 4xx would
    make Chatwoot hand the customer to a human (and Meta would redeliver it for days). If even
    that cannot be stored, 500: a retry."""
    try:
        dead_letter_id = await runtime.store.record_dead_letter(channel, reason, body)
    except StoreError as exc:
        log.error("unreadable %s webhook (%s) could not be kept: %s", channel, reason, exc)
        return 500, {"error": "could not store the event; retry"}
    log.error("unreadable %s webhook kept as dead letter %s: %s", channel, dead_letter_id, reason)
    return 200, {"status": "unreadable", "dead_letter_id": dead_letter_id, "error": reason}


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
