"""The operator's view over HTTP: the admin API under /admin/api/ and the inspector page at /admin.

Off unless ADMIN_TOKEN is set: every API route then wants `Authorization: Bearer <ADMIN_TOKEN>`
(compared in constant time). The page itself is static and holds no data; it asks for the token
and calls the API. Never imported by the webhook's Lambda (functions/webhook.py): the admin runs in
its own function (functions/admin.py) and inside `chatbuffer serve`.

Every action is one SQL function that takes the conversation's lock and records who did what
(admin_actions). An action that makes a burst due also nudges a sweeper, so it is answered now
rather than at the next tick.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from urllib.parse import unquote
from typing import Any, Awaitable, Callable

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import FileResponse, Response

from shared.db.admin import BURST_STATES
from shared.db.errors import StoreError, StoreUnavailable
from shared.runtime import Runtime

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_PAGE = 200
Handler = Callable[[Request], Awaitable[Response]]


def json_response(status_code: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json",
                    headers={"Cache-Control": "no-store"})


class AdminError(Exception):
    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code


def _authorize(runtime: Runtime, request: Request) -> str:
    """The actor's name if the bearer token is right; raises AdminError otherwise."""
    expected = runtime.settings.admin_token
    if not expected:
        raise AdminError(404, "the admin API is off: set ADMIN_TOKEN to turn it on")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise AdminError(401, "missing or wrong bearer token")
    # The page sends the name percent-encoded (header values are Latin-1 only).
    actor = unquote(request.headers.get("x-admin-actor", "")).strip()[:80]
    return actor or "admin"


def _int(value: str | None, name: str, *, default: int | None = None, low: int = 1, high: int | None = None) -> int | None:
    if value in (None, ""):
        return default
    if not (value.isascii() and value.isdecimal()) or int(value) < low or (high is not None and int(value) > high):
        raise AdminError(400, f"{name} must be a whole number from {low}" + (f" to {high}" if high else ""))
    return int(value)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AdminError(400, "body is not JSON") from None
    if not isinstance(value, dict):
        raise AdminError(400, "body must be a JSON object")
    return value


def _guarded(runtime: Runtime, handle: Callable[[Request, str], Awaitable[Any]]) -> Handler:
    """Token check, then the handler; errors become clear JSON answers."""

    async def endpoint(request: Request) -> Response:
        try:
            actor = _authorize(runtime, request)
            return json_response(200, await handle(request, actor))
        except AdminError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
            response = json_response(exc.status_code, {"error": str(exc)})
            response.headers.update(headers)
            return response
        except StoreUnavailable as exc:
            log.error("admin API: database unreachable: %s", exc)
            return json_response(503, {"error": "the database is unreachable; try again"})
        except StoreError as exc:
            if (exc.code or "").startswith("22"):  # the SQL function refused an argument
                return json_response(400, {"error": str(exc).split(": ", 1)[-1]})
            log.error("admin API: %s", exc)
            return json_response(500, {"error": "the database refused the request; see the logs"})

    return endpoint


def admin_router(runtime: Runtime, wake_sweeper: Callable[[list[int]], Awaitable[None]]) -> APIRouter:
    """The admin API's routes. `wake_sweeper` gets a due burst answered now."""
    admin = runtime.admin
    router = APIRouter()

    async def wake(buffer_ids: list[int]) -> None:
        try:
            await wake_sweeper(buffer_ids)
        except Exception:  # the action is done and the burst due: a sweeper's next pass answers it
            log.exception("admin: could not start a sweep pass for %s", buffer_ids)

    def route(path: str, method: str, handle: Callable[[Request, str], Awaitable[Any]]) -> None:
        router.add_api_route(path, _guarded(runtime, handle), methods=[method], include_in_schema=False)

    async def stats(request: Request, actor: str) -> Any:
        return await admin.stats()

    async def list_bursts(request: Request, actor: str) -> Any:
        q = request.query_params
        state = q.get("state") or None
        if state is not None and state not in BURST_STATES:
            raise AdminError(400, f"state must be one of {', '.join(BURST_STATES)}")
        limit = _int(q.get("limit"), "limit", default=50, high=MAX_PAGE) or 50
        bursts = await admin.list_bursts(  # one more than asked: whether a next page exists
            state=state, channel=q.get("channel") or None, account_id=q.get("account_id") or None,
            conversation_id=q.get("conversation_id") or None, limit=limit + 1,
            before_id=_int(q.get("before"), "before"))
        page = bursts[:limit]
        return {"bursts": page, "next_before": page[-1]["id"] if len(bursts) > limit else None}

    async def one_burst(request: Request, actor: str) -> Any:
        burst = await admin.burst(_burst_id(request))
        if burst is None:
            raise AdminError(404, "no such burst")
        return burst

    async def retry(request: Request, actor: str) -> Any:
        result = await admin.retry(_burst_id(request), actor, "api")
        if result["outcome"] == "unknown":
            raise AdminError(404, "no such burst")
        if result["outcome"] == "retried":
            log.info("admin: %s retried burst %s", actor, result["buffer_id"])
            await wake([int(result["buffer_id"])])
        return result

    async def conversation(request: Request, actor: str) -> Any:
        return await admin.conversation(*_conversation(request))

    async def answer_now(request: Request, actor: str) -> Any:
        result = await admin.answer_now(*_conversation(request), actor, "api")
        if result["buffer_id"] is not None:
            await wake([int(result["buffer_id"])])
        return result

    async def cancel(request: Request, actor: str) -> Any:
        return await admin.cancel_waiting(*_conversation(request), actor, "api")

    async def pause(request: Request, actor: str) -> Any:
        seconds = (await _json_body(request)).get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or seconds <= 0):
            raise AdminError(400, "seconds must be a positive number, or null to pause until resumed")
        return await admin.pause(*_conversation(request), seconds, actor, "api")

    async def resume(request: Request, actor: str) -> Any:
        return await admin.resume(*_conversation(request), actor, "api")

    conversation_path = "/admin/api/conversations/{channel}/{account_id}/{conversation_id}"
    route("/admin/api/stats", "GET", stats)
    route("/admin/api/bursts", "GET", list_bursts)
    route("/admin/api/bursts/{buffer_id}", "GET", one_burst)
    route("/admin/api/bursts/{buffer_id}/retry", "POST", retry)
    route(conversation_path, "GET", conversation)
    route(conversation_path + "/answer-now", "POST", answer_now)
    route(conversation_path + "/cancel", "POST", cancel)
    route(conversation_path + "/pause", "POST", pause)
    route(conversation_path + "/resume", "POST", resume)
    return router


def _burst_id(request: Request) -> int:
    return int(_int(request.path_params["buffer_id"], "burst id") or 0)


def _conversation(request: Request) -> tuple[str, str, str]:
    p = request.path_params
    return p["channel"], p["account_id"], p["conversation_id"]


def static_page(name: str) -> Handler:
    """A file of shared/web/static, as is: the pages need no build step and load nothing from elsewhere."""
    path = STATIC / name

    async def page(request: Request) -> Response:
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    return page


def mount_admin(app: FastAPI, runtime: Runtime, wake_sweeper: Callable[[list[int]], Awaitable[None]]) -> None:
    """The inspector page, its assets, and the admin API."""
    app.include_router(admin_router(runtime, wake_sweeper))
    app.add_route("/admin", static_page("admin.html"), methods=["GET"])
    for asset in ("admin.css", "admin.js", "common.css", "common.js"):
        app.add_route(f"/admin/assets/{asset}", static_page(asset), methods=["GET"])


def create_admin_app(runtime: Runtime | None = None) -> FastAPI:
    """The admin's own app, for its Lambda: a retry or an answer-now asks the sweeper function for
    a pass (as the webhook's fallback does), so the burst is answered without waiting for a tick."""
    from shared.config import Settings

    runtime = runtime or Runtime(Settings.from_env())
    app = FastAPI(title="chatbuffer admin", docs_url=None, redoc_url=None, openapi_url=None)

    async def wake(buffer_ids: list[int]) -> None:
        await runtime.dispatcher.dispatch(buffer_ids)

    mount_admin(app, runtime, wake)
    app.state.runtime = runtime
    return app
