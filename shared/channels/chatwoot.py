"""Chatwoot: verify a webhook, read what it means, send replies, show typing, hand off, fetch media.

Facts (../CHANNELS.md, Chatwoot 4.13): the signature is HMAC-SHA256 of "<timestamp>." + raw body.
Every event of the bot's inboxes comes here, ours included, and each means one thing:
- a customer's message (`message_created`, `incoming`, not private): buffered, and answered only
  while the conversation is the bot's (status `pending`; otherwise stored as history, unanswered);
- a human's message (outgoing from a `user`, or an `external_echo` typed on the phone): a takeover;
  Chatwoot Community Edition leaves the conversation `pending` when an agent replies, so the
  status alone cannot tell that a human is talking;
- a status change (`conversation_*`): away from the bot's statuses is a takeover, `resolved` and
  back to `pending` resume the bot; these events carry no account object;
- a customer's message edited or transcribed (`message_updated`);
- our own replies, other bots' messages, private notes: ignored, or the bot would talk to itself.

After a valid signature, reading is lenient: Chatwoot answers any 4xx on a pending conversation by
handing the customer to a human, so an odd field is skipped, never refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import urlsplit

import orjson  # json.loads was a third of the handler's own CPU under load (py-spy)

from shared.channels.base import (  # noqa: F401  (BadSignature... are imported from here too)
    BadPayload, BadSignature, Ignored, MediaTooLarge, MediaUnavailable, WebhookRequest, mapping, read_capped,
)
from shared.models import ConversationSignal, HumanMessage, InboundMessage, MessageEdit, ReplyEcho

if TYPE_CHECKING:  # httpx stays off the webhook's import path
    import httpx

    from shared.channels.whatsapp import WhatsAppClient

    from shared.config import Settings

log = logging.getLogger(__name__)

CHANNEL = "chatwoot"
MAX_CHARS = 4096  # Chatwoot's inboxes are mostly WhatsApp's: its limit
SIGNATURE_MAX_AGE_SECONDS = 300
# Stored in content_attributes of every reply we post: Chatwoot echoes it back, marking our own.
REPLY_MARKER = "chatbuffer_buffer_id"
CONVERSATION_EVENTS = frozenset({
    "conversation_status_changed", "conversation_opened", "conversation_resolved", "conversation_updated"})
# What an attachment may tell the model (a location's coordinates, a contact's phone...); the rest
# (thumbnails, ids, sizes in pixels) is left out of the stored row.
ATTACHMENT_KEYS = ("file_type", "content_type", "extension", "data_url", "file_size", "coordinates_lat",
                   "coordinates_long", "fallback_title", "meta", "transcribed_text")
# Chatwoot's data_url can 404 for a few seconds right after message_created (the upload is still
# running; Chatwoot itself waits up to 4 s): wait this long before each retry.
MEDIA_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


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
    # As bytes: compare_digest refuses str with non-ASCII characters, and a header may hold any.
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.strip().encode("utf-8", "replace")):
        raise BadSignature("X-Chatwoot-Signature does not match the body")


def verify_token(expected: str, given: str | None) -> None:
    """Older Chatwoot signs nothing: an unguessable ?token= in the webhook URL stands in."""
    if not given or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise BadSignature("missing or wrong ?token=")


Event = InboundMessage | ConversationSignal | MessageEdit | ReplyEcho | Ignored


def verify(settings: Settings, request: WebhookRequest) -> None:
    if settings.chatwoot_webhook_secret:
        verify_signature(settings.chatwoot_webhook_secret, request.headers.get("x-chatwoot-timestamp"),
                         request.headers.get("x-chatwoot-signature"), request.body, now=time.time())
    elif settings.chatwoot_webhook_token:
        verify_token(settings.chatwoot_webhook_token, request.query.get("token"))


def parse(settings: Settings, body: bytes) -> list[Event]:
    event = parse_event(body, settings.chatwoot_answer_statuses)
    if isinstance(event, InboundMessage) and event.platform_ref:
        # A WhatsApp inbox with its Cloud API number configured: keep where its typing goes.
        phone_number_id = settings.chatwoot_whatsapp_inboxes.get(event.inbox_id or "")
        event = dataclasses.replace(event, platform_ref=f"{phone_number_id}/{event.platform_ref}"
                                    if phone_number_id else None)
    return [event]


def parse_event(body: bytes, answer_statuses: frozenset[str]) -> Event:
    """What a webhook body means for the bot. Raise BadPayload only when it cannot be read at all."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise BadPayload("body is not a JSON object")
    kind = event.get("event")
    if not isinstance(kind, str):
        return Ignored("no event name")
    if kind == "message_created":
        return _message_created(event, answer_statuses)
    if kind == "message_updated":
        return _message_updated(event)
    if kind in CONVERSATION_EVENTS:
        return _conversation_event(event, answer_statuses)
    return Ignored(f"event {kind!r}")


def _message_created(event: Mapping[str, Any], answer_statuses: frozenset[str]) -> Event:
    if event.get("private"):
        return Ignored("private note")
    if mapping(event.get("content_attributes")).get("external_echo"):
        return _takeover(event, "the business replied from the phone")
    message_type = event.get("message_type")
    if message_type in ("outgoing", "template"):
        return _outgoing(event)
    if message_type != "incoming":
        return Ignored(f"message_type {message_type!r}")
    conversation = _object(event, "conversation")
    status = conversation.get("status")
    return InboundMessage(
        channel=CHANNEL,
        account_id=_id(_object(event, "account").get("id"), "account.id"),
        conversation_id=_id(conversation.get("id"), "conversation.id"),
        external_id=_id(event.get("id"), "id"),
        content=_content(event.get("content")),
        sent_at=_timestamp(event.get("created_at")),
        attachments=_attachments(event.get("attachments")),
        inbox_id=_inbox_id(event, conversation),
        hold_reason=None if isinstance(status, str) and status in answer_statuses
        else f"conversation status is {status!r}, not the bot's",
        platform_ref=_wamid(event.get("source_id")),
    )


def _wamid(source_id: Any) -> str | None:
    """A WhatsApp inbox's message carries its wamid in source_id (other inboxes, other ids)."""
    return source_id if isinstance(source_id, str) and source_id.startswith("wamid.") else None


def _outgoing(event: Mapping[str, Any]) -> Event:
    attributes = mapping(event.get("content_attributes"))
    if REPLY_MARKER in attributes:
        return _echo(event, attributes[REPLY_MARKER])
    sender_type = mapping(event.get("sender")).get("type")
    if sender_type == "user":
        return _takeover(event, "a human agent replied")
    return Ignored(f"outgoing message from {sender_type or 'no sender'}")


def _echo(event: Mapping[str, Any], marker: Any) -> Event:
    """Our own reply, echoed: proof it left (it completes a burst whose worker died after posting)."""
    buffer_id = str(marker).strip() if _is_id(marker) else ""
    account = mapping(event.get("account")).get("id")
    if not buffer_id.isdecimal() or len(buffer_id) > 18 or not _is_id(account) or not _is_id(event.get("id")):
        return Ignored("our own reply")
    return ReplyEcho(channel=CHANNEL, account_id=str(account).strip(), buffer_id=int(buffer_id),
                     platform_message_id=str(event["id"]).strip())


def _takeover(event: Mapping[str, Any], reason: str) -> ConversationSignal:
    conversation = _object(event, "conversation")
    sent_at = _timestamp(event.get("created_at"))
    return ConversationSignal(
        channel=CHANNEL,
        account_id=_id(_object(event, "account").get("id"), "account.id"),
        inbox_id=_inbox_id(event, conversation),
        conversation_id=_id(conversation.get("id"), "conversation.id"),
        kind="takeover",
        reason=reason,
        at=sent_at,
        message=HumanMessage(_id(event.get("id"), "id"), _content(event.get("content")), sent_at,
                             _attachments(event.get("attachments"))),
    )


def _message_updated(event: Mapping[str, Any]) -> Event:
    if event.get("message_type") != "incoming" or event.get("private"):
        return Ignored("update of a message that is not a customer's")
    return MessageEdit(
        channel=CHANNEL,
        account_id=_id(_object(event, "account").get("id"), "account.id"),
        external_id=_id(event.get("id"), "id"),
        content=_content(event.get("content")),
        attachments=_attachments(event.get("attachments")),
    )


def _conversation_event(event: Mapping[str, Any], answer_statuses: frozenset[str]) -> Event:
    """A conversation event is the conversation itself: no account object, so the account comes
    from its latest message when it has one, else the store finds it by the inbox."""
    status = event.get("status")
    if not isinstance(status, str):
        return Ignored("conversation event without a status")
    if status == "resolved":
        kind, reason = "resolved", "conversation resolved"
    elif status in answer_statuses:
        if event.get("event") != "conversation_status_changed" and not _status_changed(event):
            return Ignored(f"conversation is {status!r} and its status did not change")
        kind, reason = "returned_to_bot", f"conversation back to {status!r}"
    else:
        kind, reason = "takeover", f"conversation status changed to {status!r}"
    listed = event.get("messages")
    messages = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    account = next((m["account_id"] for m in messages if _is_id(m.get("account_id"))), None)
    return ConversationSignal(
        channel=CHANNEL,
        account_id=None if account is None else str(account).strip(),
        inbox_id=_optional_id(event.get("inbox_id")),
        conversation_id=_id(event.get("id"), "id"),
        kind=kind,
        reason=reason,
        at=_timestamp(event.get("updated_at") or event.get("timestamp")),
    )


def _status_changed(event: Mapping[str, Any]) -> bool:
    changed = event.get("changed_attributes")
    entries = changed if isinstance(changed, list) else [changed]
    return any(isinstance(entry, dict) and "status" in entry for entry in entries)


def _object(event: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = event.get(key)
    if not isinstance(value, dict):
        raise BadPayload(f"missing object {key!r}")
    return value


def _is_id(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, str)) and str(value).strip() != ""


def _id(value: Any, path: str) -> str:
    """Ids are integers in Chatwoot 4.x; strings are accepted as well."""
    if not _is_id(value):
        raise BadPayload(f"missing {path}")
    return str(value).strip()


def _optional_id(value: Any) -> str | None:
    return str(value).strip() if _is_id(value) else None


def _inbox_id(event: Mapping[str, Any], conversation: Mapping[str, Any]) -> str | None:
    return _optional_id(conversation.get("inbox_id")) or _optional_id(mapping(event.get("inbox")).get("id"))


def _content(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return _clean(value)
    if isinstance(value, (int, float)):
        return str(value)
    return None  # not text at all: the attachments (if any) still reach the model


MAX_NESTING = 32  # deeper than any attachment Chatwoot sends: what lies below is dropped


def _clean(value: Any, depth: int = 0) -> Any:
    """Without NUL characters, which PostgreSQL's text and jsonb refuse (a retry would not help),
    and no deeper than MAX_NESTING (a body nested a thousand deep must not exhaust the stack)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, (dict, list)) and depth >= MAX_NESTING:
        return None
    if isinstance(value, dict):
        return {key.replace("\x00", ""): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_clean(item, depth + 1) for item in value]
    return value


def _timestamp(value: Any) -> datetime | None:
    """ISO-8601 (Chatwoot 4.x), 'YYYY-MM-DD hh:mm:ss UTC' (older Chatwoot), or unix seconds
    (conversation events). Anything else: None, and the database stamps the arrival time."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().removesuffix(" UTC"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)  # Chatwoot's times are UTC


def _attachments(raw: Any) -> tuple[dict[str, Any], ...]:
    """Chatwoot's push_event_data can hold a null inside attachments[]: skipped, as any non-object."""
    if not isinstance(raw, list):
        return ()
    return tuple({key: _clean(item[key]) for key in ATTACHMENT_KEYS if item.get(key) is not None}
                 for item in raw if isinstance(item, dict))


async def fetch_attachment(
    http: httpx.AsyncClient, url: str, *, max_bytes: int, allowed_hosts: frozenset[str] | None = None,
    retry_delays: Sequence[float] = MEDIA_RETRY_DELAYS,
) -> tuple[bytes, str | None]:
    """GET an attachment's data_url (a public ActiveStorage redirect: no token, follow redirects),
    retrying a 404 or a server error with backoff. Returns the bytes and their content type.

    `allowed_hosts`: Chatwoot's hosts; a data_url elsewhere is refused, so a payload cannot make
    the sweeper fetch an arbitrary address (where the redirect leads, the storage, is Chatwoot's
    choice). No credentials are ever sent with the request.
    """
    import httpx  # the sweeper's path only

    host = (urlsplit(url).hostname or "").lower()
    if urlsplit(url).scheme not in ("http", "https") or not host:
        raise MediaUnavailable("data_url is not an http(s) address")
    if allowed_hosts is not None and host not in allowed_hosts:
        raise MediaUnavailable(f"data_url host {host} is not one of Chatwoot's hosts ({', '.join(sorted(allowed_hosts))});"
                               " set CHATWOOT_MEDIA_HOSTS if Chatwoot's public address differs from CHATWOOT_BASE_URL")
    problem = "not fetched"
    for delay in (*retry_delays, None):
        try:
            async with http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code == 404 or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}"
                else:
                    if response.status_code >= 400:
                        raise MediaUnavailable(f"HTTP {response.status_code}")
                    return await read_capped(response, max_bytes), response.headers.get("content-type")
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if delay is None:
            break
        await asyncio.sleep(delay)
    raise MediaUnavailable(f"{problem} after {len(retry_delays) + 1} attempts")


class ChatwootClient:
    """Chatwoot's REST API, as an Agent Bot token may use it: post replies and private notes,
    toggle typing and status; and the attachments' public data_url."""

    def __init__(self, base_url: str, api_token: str, http: httpx.AsyncClient,
                 media_hosts: frozenset[str] = frozenset(), requests_per_minute: float = 2400,
                 whatsapp: WhatsAppClient | None = None) -> None:
        from aiolimiter import AsyncLimiter  # the sweeper's: never on the webhook's import path

        self._base = base_url.rstrip("/")
        self._media_hosts = frozenset({(urlsplit(self._base).hostname or "").lower(), *media_hosts})
        self._headers = {"api_access_token": api_token}
        self._http = http
        # Chatwoot's rack-attack allows 3000 requests a minute per IP: this process spends at most
        # `requests_per_minute`, in sixths of the minute (a short burst, then an even pace).
        self._budget = AsyncLimiter(requests_per_minute / 6, 10)
        # The Cloud API, for the read receipt and typing on WhatsApp inboxes (CHATWOOT_WHATSAPP_INBOXES).
        self._whatsapp = whatsapp

    def _url(self, account_id: str, conversation_id: str, action: str) -> str:
        return f"{self._base}/api/v1/accounts/{account_id}/conversations/{conversation_id}/{action}"

    async def _post(self, account_id: str, conversation_id: str, action: str, body: dict[str, Any]) -> httpx.Response:
        async with self._budget:
            response = await self._http.post(self._url(account_id, conversation_id, action),
                                             headers=self._headers, json=body)
        response.raise_for_status()
        return response

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None:
        """Post the reply; returns Chatwoot's id for it. The marker lets its echo name the burst."""
        response = await self._post(account_id, conversation_id, "messages", {
            "content": content, "message_type": "outgoing", "private": False, "content_type": "text",
            "content_attributes": {REPLY_MARKER: buffer_id},
        })
        try:
            message_id = response.json().get("id")
        except (ValueError, AttributeError):
            return None
        return str(message_id) if _is_id(message_id) else None

    channel = CHANNEL
    max_chars = MAX_CHARS

    async def set_typing(self, account_id: str, conversation_id: str, on: bool,
                         last_message_id: str | None = None) -> None:
        """Typing in Chatwoot's dashboard; and on WhatsApp itself, with the read receipt, when the
        message came through a WhatsApp inbox whose Cloud API number is configured (its
        platform_ref is "<phone number id>/<wamid>"): Chatwoot never forwards either to WhatsApp."""
        if on and self._whatsapp is not None and last_message_id and "/" in last_message_id:
            phone_number_id, wamid = last_message_id.split("/", 1)
            try:
                await self._whatsapp.mark_read_and_typing(phone_number_id, wamid)
            except Exception as exc:  # cosmetic: Chatwoot's own indicator still goes on
                log.warning("WhatsApp read receipt and typing for a Chatwoot conversation failed: %s", exc)
        await self._post(account_id, conversation_id, "toggle_typing_status",
                         {"typing_status": "on" if on else "off"})

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None:
        """Open the conversation (from an Agent Bot this runs Chatwoot's bot hand-off: it shows up
        for the agents) and leave the reason as a private note. Both are safe to repeat."""
        await self._post(account_id, conversation_id, "toggle_status", {"status": "open"})
        await self._post(account_id, conversation_id, "messages", {
            "content": f"Handed off by the bot: {reason}", "message_type": "outgoing", "private": True,
            "content_type": "text", "content_attributes": {REPLY_MARKER: buffer_id},
        })

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]:
        url = attachment.get("data_url")
        if not isinstance(url, str) or not url:
            raise MediaUnavailable("the attachment has no data_url")
        async with self._budget:
            return await fetch_attachment(self._http, url, max_bytes=max_bytes, allowed_hosts=self._media_hosts)
