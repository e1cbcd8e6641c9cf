"""The playground at /playground: a phone-style chat to try chatbuffer as a customer would.

Only `chatbuffer serve` mounts it, and only while replies go to the console (no Chatwoot
configured): it is never part of a Lambda. A message typed there travels the real path: it
becomes a Chatwoot `message_created` webhook, signed as Chatwoot signs it, posted to this app's
own /webhooks/chatwoot; the same ingest stores it and the same sweeper answers the burst through
the console outbox. The page then reads the conversation back (its bursts, countdowns and the
reply) from the database.
"""

from __future__ import annotations

import itertools
import logging
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from starlette.responses import Response

from shared.channels import chatwoot
from shared.db.errors import StoreError
from shared.runtime import Runtime
from shared.web.admin import json_response, static_page

# Its own make-believe account, so the page can never read a real Chatwoot account's conversations
# when serve runs against a real database.
log = logging.getLogger(__name__)

ACCOUNT_ID = "playground"
INBOX_ID = 0
MAX_TEXT = 4000
_message_ids = itertools.count(int(time.time() * 1000))  # unique across restarts of a local server


def chatwoot_message(conversation_id: int, text: str) -> dict[str, Any]:
    """An incoming `message_created` event, shaped like the one Chatwoot sends for a customer."""
    now = datetime.now(timezone.utc)
    return {
        "event": "message_created",
        "id": next(_message_ids),
        "content": text,
        "content_type": "text",
        "message_type": "incoming",
        "private": False,
        "created_at": now.isoformat(),
        "attachments": [],
        "content_attributes": {},
        "account": {"id": ACCOUNT_ID, "name": "Playground"},
        "inbox": {"id": INBOX_ID, "name": "Playground"},
        "sender": {"id": 1, "name": "Playground customer", "type": "contact"},
        "conversation": {"id": conversation_id, "inbox_id": INBOX_ID, "status": "pending",
                         "channel": "Channel::Api"},
    }


def signed_request(runtime: Runtime, body: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """Headers and query as Chatwoot would send them with this deployment's secret or token."""
    settings = runtime.settings
    headers = {"content-type": "application/json"}
    if settings.chatwoot_webhook_secret:
        timestamp = str(int(time.time()))
        headers["x-chatwoot-timestamp"] = timestamp
        headers["x-chatwoot-signature"] = chatwoot.sign(settings.chatwoot_webhook_secret, timestamp, body)
        return headers, {}
    if settings.chatwoot_webhook_token:
        return headers, {"token": settings.chatwoot_webhook_token}
    return headers, {}


def mount_playground(app: FastAPI, runtime: Runtime) -> None:
    webhook = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://playground")

    async def send(request: Request) -> Response:
        # JSON only: a browser cannot send that to this port from another site without a CORS
        # preflight, which nothing here answers; a cross-site form post is refused here.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return json_response(415, {"error": "send application/json"})
        try:
            body = orjson.loads(await request.body())
            conversation_id = int(body["conversation_id"])
            text = str(body["text"]).strip()
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return json_response(400, {"error": 'send {"conversation_id": <number>, "text": "..."}'})
        if not text or len(text) > MAX_TEXT or conversation_id <= 0:
            return json_response(400, {"error": f"text must be 1 to {MAX_TEXT} characters, conversation_id positive"})
        payload = orjson.dumps(chatwoot_message(conversation_id, text))
        headers, query = signed_request(runtime, payload)
        answer = await webhook.post("/webhooks/chatwoot", content=payload, headers=headers, params=query)
        return json_response(answer.status_code, answer.json())

    async def conversation(request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        if not conversation_id.isdigit():
            return json_response(400, {"error": "conversation id must be a number"})
        try:
            view = await runtime.admin.conversation(chatwoot.CHANNEL, ACCOUNT_ID, conversation_id)
        except StoreError as exc:
            log.error("playground: %s", exc)
            return json_response(503, {"error": "the database is unreachable; try again"})
        return json_response(200, {**view, "model": "placeholder" if not runtime.settings.openai_api_key
                                   else runtime.settings.openai_model})

    app.add_route("/playground", static_page("playground.html"), methods=["GET"])
    for asset in ("playground.css", "playground.js", "common.css", "common.js"):
        app.add_route(f"/playground/assets/{asset}", static_page(asset), methods=["GET"])
    app.add_route("/playground/api/messages", send, methods=["POST"])
    app.add_route("/playground/api/conversations/{conversation_id}", conversation, methods=["GET"])
