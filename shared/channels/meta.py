"""Messenger and Instagram (one webhook, Meta's): verify, parse, send, typing, media (../CHANNELS.md).

- GET /webhooks/meta is Meta's subscription handshake (META_VERIFY_TOKEN);
- POST /webhooks/meta is signed with X-Hub-Signature-256: META_APP_SECRET, or INSTAGRAM_APP_SECRET
  when Instagram runs on an app of its own. `object` says which platform: `page` (Messenger) or
  `instagram`. A delivery batches entries and messaging items: each message is read; echoes (our
  own replies, `is_echo`), deliveries, reads, reactions and postbacks are acknowledged and ignored.
- A conversation is the page or Instagram account (`recipient.id`, the account) and the person
  (`sender.id`); a message's id is its `mid`.
- Replies go through the Send API (`messaging_type: RESPONSE`): Messenger's to /{page-id}/messages
  with META_PAGE_ACCESS_TOKEN; Instagram's to /me/messages with INSTAGRAM_ACCESS_TOKEN, the token
  of the Facebook Page linked to the Instagram account ("me" is that Page: the webhook names the
  Instagram account, not the Page). Typing is the `typing_on`/`typing_off` sender action.
- Media: the attachment's payload.url, a short-lived CDN address that needs no token.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

import orjson

from shared.channels import graph
from shared.channels.base import BadPayload, MediaUnavailable, WebhookRequest, download, mapping, objects, text_of
from shared.models import InboundMessage

if TYPE_CHECKING:
    import httpx

    from shared.config import Settings

log = logging.getLogger(__name__)

MESSENGER, INSTAGRAM = "messenger", "instagram"
CHANNELS = {"page": MESSENGER, "instagram": INSTAGRAM}  # `object` -> our channel name
MAX_CHARS = {MESSENGER: 2000, INSTAGRAM: 1000}
FILE_TYPES = {"audio": "audio", "image": "image", "video": "video", "file": "file"}


def handshake(settings: Settings, query: Mapping[str, str]) -> str:
    return graph.handshake(settings.meta_verify_token or "", query)


def verify(settings: Settings, request: WebhookRequest) -> None:
    graph.verify_signature([settings.meta_app_secret or "", settings.instagram_app_secret or ""],
                           request.headers.get("x-hub-signature-256"), request.body)


def parse(settings: Settings, body: bytes) -> list[InboundMessage]:
    try:
        delivery = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None
    kind = delivery.get("object") if isinstance(delivery, dict) else None
    channel = CHANNELS.get(kind) if isinstance(kind, str) else None
    if channel is None:
        raise BadPayload("not a page or instagram delivery")
    messages: list[InboundMessage] = []
    for entry in objects(delivery.get("entry")):
        for item in objects(entry.get("messaging")):
            message = item.get("message")
            if not isinstance(message, dict) or message.get("is_echo"):
                continue  # a delivery, read, reaction or postback; or our own message, echoed
            messages.append(_message(channel, item, message))
    return messages


def _message(channel: str, item: Mapping[str, Any], message: Mapping[str, Any]) -> InboundMessage:
    person = text_of(mapping(item.get("sender")).get("id"))
    account = text_of(mapping(item.get("recipient")).get("id"))
    mid = text_of(message.get("mid"))
    if not (person and account and mid):
        raise BadPayload("a message without sender.id, recipient.id or mid")
    attachments = tuple(_attachment(a) for a in objects(message.get("attachments")))
    return InboundMessage(channel=channel, account_id=account, conversation_id=person, external_id=mid,
                          content=text_of(message.get("text")), sent_at=_timestamp(item.get("timestamp")),
                          attachments=tuple(a for a in attachments if a))


def _attachment(attachment: Mapping[str, Any]) -> dict[str, Any]:
    payload = mapping(attachment.get("payload"))
    kind = attachment.get("type")
    if kind == "location":
        coordinates = mapping(payload.get("coordinates"))
        return {"file_type": "location", "coordinates_lat": coordinates.get("lat"),
                "coordinates_long": coordinates.get("long"), "fallback_title": text_of(attachment.get("title"))}
    url = text_of(payload.get("url"))
    return {k: v for k, v in {"file_type": FILE_TYPES.get(str(kind), "file"), "data_url": url}.items() if v}


def _timestamp(value: Any) -> datetime | None:
    """Milliseconds since the epoch."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


class MetaClient:
    """The Send API of one platform (Messenger or Instagram), with its token."""

    def __init__(self, channel: str, settings: Settings, http: httpx.AsyncClient) -> None:
        self.channel = channel
        self.max_chars = MAX_CHARS[channel]
        self._token = (settings.meta_page_access_token if channel == MESSENGER else settings.instagram_access_token) or ""
        self._base = settings.meta_graph_base_url
        self._version = settings.meta_graph_api_version
        self._http = http

    async def _send(self, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
        node = account_id if self.channel == MESSENGER else "me"
        url = graph.graph_url(self._base, self._version, node, "messages")
        return await graph.post(self._http, url, self._token, body)

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None:
        answer = await self._send(account_id, {"recipient": {"id": conversation_id}, "messaging_type": "RESPONSE",
                                               "message": {"text": content}})
        return text_of(answer.get("message_id"))

    async def set_typing(self, account_id: str, conversation_id: str, on: bool, last_message_id: str | None) -> None:
        await self._send(account_id, {"recipient": {"id": conversation_id},
                                      "sender_action": "typing_on" if on else "typing_off"})

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None:
        """The bot is paused on the conversation (complete_buffer); the page's inbox is where a
        human answers, and the burst shows `handed_off` with its reason to an operator."""
        log.warning("buffer %s handed off on %s: the bot is paused on the conversation; answer it from the inbox",
                    buffer_id, self.channel)

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]:
        url = attachment.get("data_url")  # from a signed delivery: Meta's CDN
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise MediaUnavailable("the attachment has no http(s) url")
        return await download(self._http, url, max_bytes=max_bytes)
