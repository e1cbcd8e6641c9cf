"""What every channel adapter shares: the request it verifies, the errors it raises, and a capped
download.

Each adapter (shared/channels/<name>.py) has the same shape:
  verify(settings, request)      raise BadSignature unless the platform signed these exact bytes
  parse(settings, body)          the deliveries' inbound messages and signals (zero or more)
  <Name>Client                   post_reply, set_typing, hand_off, fetch_media (the sweeper's side)
and, for the platforms with a subscription handshake, handshake(settings, query).

Light on purpose: the webhook imports it, so no httpx, no model SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import httpx


class BadSignature(Exception):
    """The webhook signature is missing, wrong or stale."""


class BadPayload(ValueError):
    """The webhook body is not an event of this platform that we can read."""


class MediaUnavailable(Exception):
    """An attachment could not be fetched; the message says why."""


class MediaTooLarge(MediaUnavailable):
    """An attachment is larger than the limit it was fetched with."""


class PermanentSendError(Exception):
    """The platform refused the reply for a reason no retry can change (WhatsApp's 24-hour
    customer-service window, a channel that is not configured here): the burst ends `failed` at
    once, with this message, instead of being retried."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """A valid event that asks nothing of the bot; acknowledged, never stored."""

    reason: str


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A webhook as its signature covers it: the raw bytes, the headers (lower-case names), the
    query string's parameters, and the address it was sent to."""

    body: bytes
    headers: Mapping[str, str]
    query: Mapping[str, str]
    url: str


# --- reading a payload leniently (after its signature is verified, an odd field is skipped) --------

def objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in a list; anything else, nothing."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def text_of(value: Any) -> str | None:
    """A string (or number) as stored: without NUL characters, which PostgreSQL's text refuses;
    blank is None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "").strip() or None


# --- media ------------------------------------------------------------------------------------------

async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The body of a streamed response, refused past `max_bytes` (declared or counted)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise MediaTooLarge(f"{int(declared)} bytes, over the {max_bytes}-byte limit")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise MediaTooLarge(f"over the {max_bytes}-byte limit")
    return bytes(body)


async def download(http: httpx.AsyncClient, url: str, *, max_bytes: int, **request: object) -> tuple[bytes, str | None]:
    """GET `url` once (with the platform's credentials in `request`, if any), capped at max_bytes."""
    async with http.stream("GET", url, follow_redirects=True, **request) as response:  # type: ignore[arg-type]
        if response.status_code >= 400:
            raise MediaUnavailable(f"HTTP {response.status_code}")
        return await read_capped(response, max_bytes), response.headers.get("content-type")
