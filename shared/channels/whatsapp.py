"""WhatsApp Cloud API, direct: verify, parse, send, typing, media (../CHANNELS.md).

- GET /webhooks/whatsapp is Meta's subscription handshake (WHATSAPP_VERIFY_TOKEN);
- POST /webhooks/whatsapp is signed with X-Hub-Signature-256 (META_APP_SECRET). A delivery may
  batch several entries, changes and messages; statuses (sent, delivered, read, failed),
  reactions and other fields are acknowledged and ignored.
- A conversation is the business number (`metadata.phone_number_id`, the account) and the
  customer (`from`, or `from_user_id` for a customer known by username only). A message's id is
  its wamid: Meta redelivers for up to 7 days, and the store drops what it already holds.
- Replies go from the phone_number_id the message came to, with WHATSAPP_ACCESS_TOKEN.
- Typing: one call on the customer's last wamid marks it read and shows "typing..." (25 s, or
  until the reply). There is no "typing off": the reply ends it.
- Media: a message names a media id; the Graph API gives a short-lived URL for it (two steps,
  both with the token).

The Chatwoot adapter uses `WhatsAppClient.mark_read_and_typing` for Chatwoot's WhatsApp inboxes,
which Chatwoot never shows typing on.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

import orjson

from shared.channels import graph
from shared.channels.base import (
    BadPayload, MediaTooLarge, MediaUnavailable, WebhookRequest, download, mapping, objects, text_of,
)
from shared.models import InboundMessage

if TYPE_CHECKING:
    import httpx

    from shared.config import Settings

log = logging.getLogger(__name__)

CHANNEL = "whatsapp"
MAX_CHARS = 4096
# What each message type holds: media types name a media id, the rest are read into text.
MEDIA_TYPES = {"audio": "audio", "image": "image", "sticker": "image", "video": "video", "document": "file"}
IGNORED_TYPES = frozenset({"reaction", "system", "unsupported", "request_welcome"})


def handshake(settings: Settings, query: Mapping[str, str]) -> str:
    return graph.handshake(settings.whatsapp_verify_token or "", query)


def verify(settings: Settings, request: WebhookRequest) -> None:
    graph.verify_signature([settings.meta_app_secret or ""], request.headers.get("x-hub-signature-256"),
                           request.body)


def parse(settings: Settings, body: bytes) -> list[InboundMessage]:
    """Every customer message in the delivery, in order; raise BadPayload if it is not one."""
    try:
        delivery = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None
    if not isinstance(delivery, dict) or delivery.get("object") != "whatsapp_business_account":
        raise BadPayload("not a whatsapp_business_account delivery")
    messages: list[InboundMessage] = []
    for entry in objects(delivery.get("entry")):
        for change in objects(entry.get("changes")):
            value = change.get("value")
            if change.get("field") != "messages" or not isinstance(value, dict):
                continue
            business = text_of(mapping(value.get("metadata")).get("phone_number_id"))
            for message in objects(value.get("messages")):
                inbound = _message(business, message)
                if inbound is not None:
                    messages.append(inbound)
    return messages


def _message(business: str | None, message: Mapping[str, Any]) -> InboundMessage | None:
    kind = message.get("type")
    customer = text_of(message.get("from")) or text_of(message.get("from_user_id"))
    wamid = text_of(message.get("id"))
    if kind in IGNORED_TYPES or not isinstance(kind, str):
        return None
    if not (business and customer and wamid):
        raise BadPayload("a message without metadata.phone_number_id, from or id")
    content, attachments = _read(kind, message)
    return InboundMessage(channel=CHANNEL, account_id=business, conversation_id=customer, external_id=wamid,
                          content=content, sent_at=_timestamp(message.get("timestamp")), attachments=attachments)


def _read(kind: str, message: Mapping[str, Any]) -> tuple[str | None, tuple[dict[str, Any], ...]]:
    """The text and attachments of one message, in the shape every channel stores them."""
    body = mapping(message.get(kind))
    if kind == "text":
        return text_of(body.get("body")), ()
    if kind in MEDIA_TYPES:
        attachment = {"file_type": MEDIA_TYPES[kind], "media_id": text_of(body.get("id")),
                      "content_type": text_of(body.get("mime_type")), "file_name": text_of(body.get("filename"))}
        return text_of(body.get("caption")), ({k: v for k, v in attachment.items() if v},)
    if kind == "location":
        place = ", ".join(p for p in (text_of(body.get("name")), text_of(body.get("address"))) if p)
        return None, ({"file_type": "location", "coordinates_lat": body.get("latitude"),
                       "coordinates_long": body.get("longitude"), "fallback_title": place or None},)
    if kind == "contacts":
        cards = tuple({"file_type": "contact",
                       "meta": {"firstName": text_of(mapping(c.get("name")).get("formatted_name"))},
                       "fallback_title": ", ".join(p for p in (text_of(mapping(phone).get("phone"))
                                                               for phone in objects(c.get("phones"))) if p) or None}
                      for c in objects(message.get("contacts")))
        return None, cards
    if kind == "interactive":  # a tapped button or list row: its title is what the customer said
        for reply in ("button_reply", "list_reply"):
            if isinstance(body.get(reply), dict):
                return text_of(body[reply].get("title")), ()
    if kind == "button":
        return text_of(body.get("text")), ()
    return f"[a WhatsApp {kind} message]", ()


def _timestamp(value: Any) -> datetime | None:
    """Meta's unix seconds (a string); anything else: None, and the database stamps the arrival."""
    try:
        return datetime.fromtimestamp(int(str(value)), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


class WhatsAppClient:
    """The Cloud API's messages endpoint and media, with WHATSAPP_ACCESS_TOKEN."""

    channel = CHANNEL
    max_chars = MAX_CHARS

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._token = settings.whatsapp_access_token or ""
        self._base = settings.meta_graph_base_url
        self._version = settings.meta_graph_api_version
        self._http = http

    async def _messages(self, phone_number_id: str, body: dict[str, Any]) -> dict[str, Any]:
        url = graph.graph_url(self._base, self._version, phone_number_id, "messages")
        return await graph.post(self._http, url, self._token, {"messaging_product": "whatsapp", **body})

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None:
        answer = await self._messages(account_id, {"recipient_type": "individual", "to": conversation_id,
                                                   "type": "text", "text": {"body": content}})
        sent = answer.get("messages")
        return text_of(sent[0].get("id")) if isinstance(sent, list) and sent and isinstance(sent[0], dict) else None

    async def mark_read_and_typing(self, phone_number_id: str, wamid: str) -> None:
        await self._messages(phone_number_id, {"status": "read", "message_id": wamid,
                                               "typing_indicator": {"type": "text"}})

    async def set_typing(self, account_id: str, conversation_id: str, on: bool, last_message_id: str | None) -> None:
        if on and last_message_id:
            await self.mark_read_and_typing(account_id, last_message_id)

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None:
        """No inbox on the Cloud API to hand the customer to: the bot is paused on the conversation
        (complete_buffer) and the burst shows `handed_off` with its reason to an operator."""
        log.warning("buffer %s handed off on WhatsApp: the bot is paused on the conversation; answer it from "
                    "the WhatsApp Business tools", buffer_id)

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]:
        media_id = attachment.get("media_id")
        if not isinstance(media_id, str) or not media_id:
            raise MediaUnavailable("the attachment has no media id")
        headers = {"Authorization": f"Bearer {self._token}"}
        response = await self._http.get(graph.graph_url(self._base, self._version, media_id), headers=headers)
        if response.status_code >= 400:
            raise MediaUnavailable(f"media {media_id}: HTTP {response.status_code}")
        media = response.json()
        size = str(media.get("file_size", ""))  # a number, or a numeral in some API versions
        if size.isdigit() and int(size) > max_bytes:
            raise MediaTooLarge(f"{size} bytes, over the {max_bytes}-byte limit")
        if not isinstance(media.get("url"), str):
            raise MediaUnavailable(f"media {media_id}: no url")
        data, content_type = await download(self._http, media["url"], max_bytes=max_bytes, headers=headers)
        return data, content_type or media.get("mime_type")
