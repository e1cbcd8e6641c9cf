"""TEST CODE: a fake of the far side of HTTP (OpenAI, Chatwoot, Meta's Graph API, Twilio) on loopback.

Real HTTP, so the official OpenAI SDK (httpx2), the Chatwoot client (httpx) and a `chatbuffer serve`
subprocess all talk to it unchanged. It records what it receives, can answer slowly (benchmarks)
and can fail on purpose (retry tests).

The fake model answers Structured Outputs requests with the JSON decision (the reply is an echo of
the burst unless a test queued another decision), or refuses or ignores `response_format` like
servers without it. The fake Chatwoot also serves attachments as ActiveStorage does: a redirect
URL that can 404 for its first requests, then redirects to the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

import httpx

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route


@dataclass
class MediaFile:
    data: bytes
    content_type: str
    not_found_first: int = 0  # answer this many requests with 404 first (an upload still running)
    requests: int = 0


@dataclass
class FarSide:
    openai_latency: float = 0.0
    chatwoot_latency: float = 0.0
    completions: list[dict[str, Any]] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)  # each: account, conversation, body, at
    typing: list[dict[str, Any]] = field(default_factory=list)
    fail_completions: int = 0  # answer the next N completions with 500
    fail_replies: int = 0  # answer the next N reply posts with 500
    fail_handoffs: int = 0  # answer the next N toggle_status calls with 500
    throttle_completions: int = 0  # answer the next N completions with 429 and Retry-After
    throttle_replies: int = 0  # answer the next N reply posts with 429 and Retry-After
    retry_after: str = "1"
    # Like Chatwoot: each reply posted is echoed back to this webhook URL (signed with this secret),
    # redelivered a few times while it answers an error.
    echo_to: str | None = None
    echo_secret: str = ""
    kill_on_reply: int | None = None  # SIGKILL this process once a reply has been received
    gateway_errors_after_reply: int = 0  # the next N replies arrive, but the answer is a 504
    # Structured Outputs: "json" (supported), "reject" (400, like a server without them), "ignore"
    # (plain text, as if response_format were not there) or "fenced" (not enforced, and the model
    # writes the JSON in a Markdown code fence anyway).
    structured: str = "json"
    decisions: list[dict[str, Any]] = field(default_factory=list)  # next JSON decisions; "{echo}" in reply
    structured_refusals: int = 0  # requests refused for their response_format ("reject")
    transcriptions: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[dict[str, Any]] = field(default_factory=list)  # toggle_status calls
    media: dict[str, MediaFile] = field(default_factory=dict)
    # Meta's Graph API and Twilio's Messages API: every call, and errors to answer the next sends with.
    platform_calls: list[dict[str, Any]] = field(default_factory=list)  # platform, path, body, auth
    platform_errors: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (200, {}): let one through
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def reset(self) -> None:
        with self.lock:
            for recorded in (self.completions, self.replies, self.typing, self.decisions, self.transcriptions,
                             self.statuses, self.platform_calls, self.platform_errors):
                recorded.clear()
            self.media.clear()
            self.fail_completions = self.fail_replies = self.fail_handoffs = self.structured_refusals = 0
            self.throttle_completions = self.throttle_replies = 0
            self.retry_after = "1"
            self.echo_to = None
            self.kill_on_reply = None
            self.gateway_errors_after_reply = 0
            self.openai_latency = self.chatwoot_latency = 0
            self.structured = "json"

    def add_media(self, key: str, data: bytes, content_type: str, not_found_first: int = 0) -> str:
        """Serve an attachment; returns its data_url (ActiveStorage's public redirect form)."""
        with self.lock:
            self.media[key] = MediaFile(data, content_type, not_found_first)
        return f"{self.url}/rails/active_storage/blobs/redirect/{key}/{key}"

    def platform_sends(self, platform: str) -> list[dict[str, Any]]:
        """The replies posted to Meta's Graph API ("graph") or Twilio ("twilio"); not typing nor reads."""
        return [c for c in self.platform_calls if c["platform"] == platform and c["kind"] == "reply"]

    def platform_typing(self) -> list[dict[str, Any]]:
        return [c for c in self.platform_calls if c["kind"] == "typing"]

    async def graph_messages(self, request: Request) -> JSONResponse:
        """Meta's Send API (Messenger, Instagram) and the Cloud API's messages endpoint (WhatsApp)."""
        body = await request.json()
        kind = "typing" if "status" in body or "sender_action" in body else "reply"
        with self.lock:
            self.platform_calls.append({"platform": "graph", "kind": kind, "account": request.path_params["account"],
                                        "body": body, "auth": request.headers.get("authorization"), "at": time.time()})
            error = self.platform_errors.pop(0) if kind == "reply" and self.platform_errors else None
            n = len(self.platform_calls)
        if error and error[0] >= 400:  # a queued (200, {}) lets that send through
            return JSONResponse(error[1], status_code=error[0])
        if kind == "typing":
            return JSONResponse({"success": True})
        if body.get("messaging_product") == "whatsapp":
            return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": body.get("to")}],
                                 "messages": [{"id": f"wamid.OUT{n}"}]})
        return JSONResponse({"recipient_id": body["recipient"]["id"], "message_id": f"m_OUT{n}"})

    async def graph_media(self, request: Request) -> Response:
        """The Cloud API's first media step: a media id's short-lived URL (bearer token required)."""
        key = request.path_params["media_id"]
        media = self.media.get(key)
        if not request.headers.get("authorization", "").startswith("Bearer ") or media is None:
            return JSONResponse({"error": {"code": 100, "message": "no such media"}}, status_code=404)
        return JSONResponse({"url": f"{self.url}/graph-media/{key}", "mime_type": media.content_type,
                             "file_size": len(media.data), "id": key, "messaging_product": "whatsapp"})

    async def graph_media_bytes(self, request: Request) -> Response:
        media = self.media.get(request.path_params["media_id"])
        if not request.headers.get("authorization", "").startswith("Bearer ") or media is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return Response(media.data, media_type=media.content_type)

    async def twilio_messages(self, request: Request) -> JSONResponse:
        from urllib.parse import parse_qsl

        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        with self.lock:
            self.platform_calls.append({"platform": "twilio", "kind": "reply", "account": request.path_params["sid"],
                                        "body": form, "auth": request.headers.get("authorization"), "at": time.time()})
            error = self.platform_errors.pop(0) if self.platform_errors else None
            n = len(self.platform_calls)
        if error:
            return JSONResponse(error[1], status_code=error[0])
        return JSONResponse({"sid": f"SMOUT{n}", "status": "queued", "body": form.get("Body")}, status_code=201)

    async def twilio_media(self, request: Request) -> Response:
        media = self.media.get(request.path_params["media"])
        if not request.headers.get("authorization", "").startswith("Basic ") or media is None:
            return JSONResponse({"code": 20003, "message": "Authenticate"}, status_code=401)
        return Response(media.data, media_type=media.content_type)

    def public_replies(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if not r["body"].get("private")]

    def private_notes(self) -> list[dict[str, Any]]:
        return [r for r in self.replies if r["body"].get("private")]

    def reply_text(self, messages: list[dict[str, Any]]) -> str:
        """The fake model's answer names every customer text since our last reply (the burst)."""
        texts: list[str] = []
        for message in messages:
            if message["role"] == "assistant":
                texts = []
            elif message["role"] == "user":
                content = message["content"]
                parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
                texts += [p["text"] if p["type"] == "text" else "<image>" for p in parts]
        return "echo: " + " | ".join(texts)

    def _take_failure(self, name: str) -> bool:
        with self.lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                return True
        return False

    async def chat_completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        if self.openai_latency:
            await asyncio.sleep(self.openai_latency)
        if self._take_failure("throttle_completions"):
            return JSONResponse({"error": {"message": "Rate limit reached", "type": "requests"}}, status_code=429,
                                headers={"retry-after": self.retry_after})
        if self._take_failure("fail_completions"):
            return JSONResponse({"error": {"message": "fake outage", "type": "server_error"}}, status_code=500)
        structured = (body.get("response_format") or {}).get("type") == "json_schema"
        if structured and self.structured == "reject":
            with self.lock:
                self.structured_refusals += 1
            return JSONResponse({"error": {"message": "response_format json_schema is not supported",
                                           "type": "invalid_request_error"}}, status_code=400)
        with self.lock:
            self.completions.append(body)
            decision = self.decisions.pop(0) if self.decisions else None
        echo = self.reply_text(body["messages"])
        content = echo
        if structured and self.structured in ("json", "fenced"):
            decision = {"should_reply": True, "reply": "{echo}", "handoff": False, "handoff_reason": None,
                        **(decision or {})}
            content = json.dumps({**decision, "reply": decision["reply"].replace("{echo}", echo)})
            if self.structured == "fenced":
                content = f"```json\n{content}\n```"
        return JSONResponse({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    async def audio_transcription(self, request: Request) -> JSONResponse:
        """The fake transcribes audio bytes of the form b'...voice:<words>' into <words>."""
        body = await request.body()
        model = re.search(rb'name="model"\r\n\r\n([^\r]*)', body)
        words = re.search(rb"voice:([^\r\n]*)", body)
        with self.lock:
            self.transcriptions.append({"model": model.group(1).decode() if model else None,
                                        "bytes": len(body)})
        if words is None:
            return JSONResponse({"error": {"message": "could not decode audio", "type": "invalid_request_error"}},
                                status_code=400)
        return JSONResponse({"text": words.group(1).decode()})

    async def media_redirect(self, request: Request) -> Response:
        key = request.path_params["key"]
        with self.lock:
            media = self.media.get(key)
            if media is not None:
                media.requests += 1
        if media is None or media.requests <= media.not_found_first:
            return JSONResponse({"error": "not found"}, status_code=404)
        return RedirectResponse(f"{self.url}/storage/{key}", status_code=302)

    async def media_storage(self, request: Request) -> Response:
        media = self.media.get(request.path_params["key"])
        if media is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return Response(media.data, media_type=media.content_type)

    async def chatwoot_status(self, request: Request) -> JSONResponse:
        body = await request.json()
        if self._take_failure("fail_handoffs"):
            return JSONResponse({"error": "fake outage"}, status_code=500)
        with self.lock:
            self.statuses.append({"account": request.path_params["account"],
                                  "conversation": request.path_params["conversation"], **body})
        return JSONResponse({"payload": {"success": True, "current_status": body.get("status")}})

    async def chatwoot_message(self, request: Request) -> JSONResponse:
        if request.headers.get("api_access_token") is None:
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        body = await request.json()
        if self.chatwoot_latency:
            await asyncio.sleep(self.chatwoot_latency)
        if self._take_failure("throttle_replies"):
            return JSONResponse({"error": "Too many requests"}, status_code=429, headers={"retry-after": self.retry_after})
        if self._take_failure("fail_replies"):
            return JSONResponse({"error": "fake outage"}, status_code=500)
        with self.lock:
            self.replies.append({"account": request.path_params["account"],
                                 "conversation": request.path_params["conversation"],
                                 "body": body, "at": time.time()})
            message_id = 900_000 + len(self.replies)
            victim, self.kill_on_reply = self.kill_on_reply, None
        if victim:  # the reply reached "Chatwoot"; its sender dies before hearing back
            os.kill(victim, signal.SIGKILL)
        if self._take_failure("gateway_errors_after_reply"):  # it arrived; the answer got lost on the way
            return JSONResponse({"error": "gateway timeout"}, status_code=504)
        if self.echo_to:
            asyncio.get_running_loop().create_task(self._echo(request.path_params, body, message_id))
        return JSONResponse({"id": message_id, "content": body.get("content")})

    async def _echo(self, where: Mapping[str, Any], body: dict[str, Any], message_id: int) -> None:
        """Chatwoot's message_created for the bot's own message, as it sends every outgoing one."""
        from shared.channels.chatwoot import sign

        await asyncio.sleep(0.05)
        payload = json.dumps({
            "event": "message_created", "id": message_id, "content": body.get("content"),
            "message_type": "outgoing", "private": False, "content_attributes": body.get("content_attributes") or {},
            "account": {"id": int(where["account"])}, "sender": {"id": 7, "type": "agent_bot"},
            "conversation": {"id": int(where["conversation"]), "status": "pending"},
        }).encode()
        for attempt in range(3):  # Chatwoot retries an agent bot's webhook on 429 and 500: 3 attempts, 3 s apart
            timestamp = str(int(time.time()))
            headers = {"content-type": "application/json", "x-chatwoot-timestamp": timestamp,
                       "x-chatwoot-signature": sign(self.echo_secret, timestamp, payload)}
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=5) as client:
                    if (await client.post(self.echo_to, content=payload, headers=headers)).status_code == 200:
                        return
            await asyncio.sleep(3)

    async def chatwoot_typing(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self.lock:
            self.typing.append({"conversation": request.path_params["conversation"], "at": time.time(), **body})
        return JSONResponse({})

    async def stats(self, request: Request) -> JSONResponse:
        """Counts, and any buffer answered more than once (by our replies' content_attributes)."""
        with self.lock:
            ids = Counter(r["body"].get("content_attributes", {}).get("chatbuffer_buffer_id") for r in self.replies)
            return JSONResponse({
                "completions": len(self.completions), "replies": len(self.replies),
                "duplicate_buffer_ids": sorted(i for i, n in ids.items() if n > 1),
                "distinct_buffer_ids": len(ids),
                "reply_times": [r["at"] for r in self.replies] if request.query_params.get("times") else None,
                "reply_buffer_ids": [r["body"].get("content_attributes", {}).get("chatbuffer_buffer_id")
                                     for r in self.replies] if request.query_params.get("ids") else None,
            })

    def app(self) -> Starlette:
        base = "/api/v1/accounts/{account}/conversations/{conversation}"
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route(base + "/messages", self.chatwoot_message, methods=["POST"]),
            Route(base + "/toggle_typing_status", self.chatwoot_typing, methods=["POST"]),
            Route(base + "/toggle_status", self.chatwoot_status, methods=["POST"]),
            Route("/v1/audio/transcriptions", self.audio_transcription, methods=["POST"]),
            Route("/rails/active_storage/blobs/redirect/{key}/{name}", self.media_redirect, methods=["GET"]),
            Route("/storage/{key}", self.media_storage, methods=["GET"]),
            Route("/v26.0/{account}/messages", self.graph_messages, methods=["POST"]),
            Route("/v26.0/{media_id}", self.graph_media, methods=["GET"]),
            Route("/graph-media/{media_id}", self.graph_media_bytes, methods=["GET"]),
            Route("/2010-04-01/Accounts/{sid}/Messages.json", self.twilio_messages, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages/{message}/Media/{media}", self.twilio_media, methods=["GET"]),
            Route("/_stats", self.stats, methods=["GET"]),
            Route("/health", lambda request: JSONResponse({"status": "ok"}), methods=["GET"]),
        ])

    def wait_for_replies(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.replies) >= count:
                    return list(self.replies)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} replies within {timeout}s, got {len(self.replies)}")


def app_from_env() -> Starlette:
    """For a far side in its own process (benchmarks): latencies from FAR_* variables."""
    import os

    return FarSide(openai_latency=float(os.environ.get("FAR_OPENAI_LATENCY", "0")),
                   chatwoot_latency=float(os.environ.get("FAR_CHATWOOT_LATENCY", "0"))).app()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Runs an ASGI app with uvicorn on a loopback port in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def start_far_side(**options: Any) -> tuple[FarSide, ServerThread]:
    far = FarSide(**options)
    server = ServerThread(far.app()).__enter__()
    far.url = server.url
    return far, server
