"""Chatwoot: verify a webhook, decide whether it is a customer message to buffer, send replies.

Facts (../CHANNELS.md, Chatwoot 4.13): the signature is HMAC-SHA256 of "<timestamp>." + raw body;
only `message_created` + `incoming` + not private, in a conversation the bot owns (`pending`), is a
customer message; our own replies, human agents, private notes and echoes come back and must be
ignored, or the bot would talk to itself.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping

import orjson  # json.loads was a third of the handler's own CPU under load (py-spy)

from shared.models import InboundMessage

if TYPE_CHECKING:  # httpx stays off the webhook's import path
    import httpx

CHANNEL = "chatwoot"
SIGNATURE_MAX_AGE_SECONDS = 300
# Stored in content_attributes of every reply we post: Chatwoot echoes it back, marking our own.
REPLY_MARKER = "chatbuffer_buffer_id"


class BadSignature(Exception):
    """The webhook signature is missing, wrong or stale."""


class BadPayload(ValueError):
    """The webhook body is not a Chatwoot event we can read."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Chatwoot-Signature header value for this body (also used by tests and benchmarks)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, *, now: float
) -> None:
    """Raise BadSignature unless `signature` signs these exact bytes at a fresh timestamp."""
    if not timestamp or not signature:
        raise BadSignature("missing X-Chatwoot-Signature or X-Chatwoot-Timestamp")
    try:
        age = now - int(timestamp)
    except ValueError:
        raise BadSignature("X-Chatwoot-Timestamp is not unix seconds") from None
    if abs(age) > SIGNATURE_MAX_AGE_SECONDS:
        raise BadSignature(f"X-Chatwoot-Timestamp is {int(age)} s off (limit {SIGNATURE_MAX_AGE_SECONDS} s)")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        raise BadSignature("X-Chatwoot-Signature does not match the body")


def verify_token(expected: str, given: str | None) -> None:
    """Older Chatwoot signs nothing: an unguessable ?token= in the webhook URL stands in."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode()):
        raise BadSignature("missing or wrong ?token=")


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid event that is not a customer message for the bot; acknowledged, never stored."""

    reason: str


def parse_event(body: bytes, answer_statuses: frozenset[str]) -> InboundMessage | Ignored:
    """Read a webhook body: a customer message to buffer, or why it is ignored. Raise BadPayload."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise BadPayload("body is not a JSON object")
    if event.get("event") != "message_created":
        return Ignored(f"event {event.get('event')!r}")
    if event.get("message_type") != "incoming":
        return Ignored(f"message_type {event.get('message_type')!r}")
    if event.get("private"):
        return Ignored("private note")
    if (event.get("content_attributes") or {}).get("external_echo"):
        return Ignored("echo of a message sent from the phone")
    conversation = _object(event, "conversation")
    status = conversation.get("status")
    if status not in answer_statuses:
        return Ignored(f"conversation status {status!r}")
    return InboundMessage(
        channel=CHANNEL,
        account_id=_id(_object(event, "account"), "account.id"),
        conversation_id=_id(conversation, "conversation.id"),
        external_id=_id(event, "id"),
        content=_content(event),
        sent_at=_timestamp(event.get("created_at")),
        attachments=tuple(_attachment(a) for a in event.get("attachments") or ()),
    )


def _object(event: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = event.get(key)
    if not isinstance(value, dict):
        raise BadPayload(f"missing object {key!r}")
    return value


def _id(obj: Mapping[str, Any], path: str) -> str:
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or str(value) == "":
        raise BadPayload(f"missing {path}")
    return str(value)


def _content(event: Mapping[str, Any]) -> str | None:
    content = event.get("content")
    if content is not None and not isinstance(content, str):
        raise BadPayload("content is not text")
    return content


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None  # the database stamps the arrival time instead
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadPayload(f"created_at {value!r} is not ISO-8601") from None


def _attachment(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadPayload("attachments[] holds a non-object")
    return {key: raw.get(key) for key in ("file_type", "content_type", "data_url")}


class ChatwootClient:
    """Chatwoot's REST API, as an Agent Bot token may use it: post replies, toggle typing."""

    def __init__(self, base_url: str, api_token: str, http: httpx.AsyncClient) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"api_access_token": api_token}
        self._http = http

    def _url(self, account_id: str, conversation_id: str, action: str) -> str:
        return f"{self._base}/api/v1/accounts/{account_id}/conversations/{conversation_id}/{action}"

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> None:
        response = await self._http.post(
            self._url(account_id, conversation_id, "messages"),
            headers=self._headers,
            json={
                "content": content,
                "message_type": "outgoing",
                "private": False,
                "content_type": "text",
                "content_attributes": {REPLY_MARKER: buffer_id},
            },
        )
        response.raise_for_status()

    async def set_typing(self, account_id: str, conversation_id: str, on: bool) -> None:
        response = await self._http.post(
            self._url(account_id, conversation_id, "toggle_typing_status"),
            headers=self._headers,
            json={"typing_status": "on" if on else "off"},
        )
        response.raise_for_status()
