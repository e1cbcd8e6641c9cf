"""Twilio, SMS and WhatsApp: verify, parse, send, typing, media (../CHANNELS.md).

- POST /webhooks/twilio: a form body (base64 under API Gateway; Mangum hands over the bytes), signed
  with X-Twilio-Signature: base64 HMAC-SHA1 of the exact public URL Twilio called followed by every
  parameter's name and value, sorted by name (TWILIO_AUTH_TOKEN). Behind a proxy that rewrites the
  host, TWILIO_WEBHOOK_URL is that public URL. Ten lines of hmac, rather than the twilio package,
  whose request validator would bring requests and aiohttp into the Lambda's zip.
- Twilio waits 15 s and reads the answer as TwiML: an empty <Response/> (an empty body is error
  11200); the reply goes later, through the Messages API (TWILIO_ACCOUNT_SID, basic auth).
- A signed request that is not a customer's message (a status callback, a voice call) is
  acknowledged and ignored.
- A conversation is our number (`To`, the account) and the customer (`From`): one customer writing
  to two of your numbers is two conversations. A message's id is its MessageSid.
- Twilio sends no time of the message: the database stamps its arrival.
- Typing: Twilio's SMS has none; nothing is sent.
- Media: MediaUrl<n> on Twilio's API host, fetched with basic auth (httpx drops the credentials on
  the redirect to the storage host).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import parse_qsl, urlsplit

from shared.channels.base import BadPayload, BadSignature, MediaUnavailable, PermanentSendError, WebhookRequest, download
from shared.models import InboundMessage

if TYPE_CHECKING:
    import httpx

    from shared.config import Settings

log = logging.getLogger(__name__)

CHANNEL = "twilio"
MAX_CHARS = 1600
EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
# Every answer, whatever became of the delivery: Twilio reads it as TwiML, and <Response/> says
# "nothing to send now" (an empty body would be its error 11200). The outcome goes to the log.
ACKNOWLEDGEMENT = (EMPTY_TWIML, "text/xml")
# Refusals no retry can change: 63016 outside WhatsApp's 24-hour window, 21610 the customer
# unsubscribed (texted STOP).
PERMANENT_ERRORS = {63016: "outside the 24-hour customer-service window", 21610: "the customer unsubscribed (STOP)"}
MAX_MEDIA = 10  # Twilio sends at most ten media per message


def sign(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """The X-Twilio-Signature of a form POST to `url` (tests use it too)."""
    signed = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def form(body: bytes) -> list[tuple[str, str]]:
    """The form's parameters, blank values kept: they are signed too."""
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadPayload(f"body is not a form: {exc}") from None


def verify(settings: Settings, request: WebhookRequest) -> None:
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        raise BadSignature("missing X-Twilio-Signature")
    try:
        params = form(request.body)
    except BadPayload:
        raise BadSignature("the body is not a form, so it cannot be Twilio's") from None
    expected = sign(settings.twilio_auth_token or "", settings.twilio_webhook_url or request.url, params)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
        raise BadSignature("X-Twilio-Signature does not match the URL and parameters"
                           + ("" if settings.twilio_webhook_url else
                              " (behind a proxy? set TWILIO_WEBHOOK_URL to the URL Twilio calls)"))


def parse(settings: Settings, body: bytes) -> list[InboundMessage]:
    params = dict(form(body))
    if "MessageStatus" in params or "Body" not in params or "MessageSid" not in params:
        return []  # a status callback or a call: nothing for the bot
    sender, number = params.get("From", "").strip(), params.get("To", "").strip()
    if not (sender and number):
        raise BadPayload("a message without From or To")
    return [InboundMessage(channel=CHANNEL, account_id=number, conversation_id=sender,
                           external_id=params["MessageSid"].strip(), content=params["Body"].strip() or None,
                           attachments=_attachments(params))]


def _attachments(params: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    found: list[dict[str, Any]] = []
    count = int(params["NumMedia"]) if params.get("NumMedia", "").isdigit() else 0
    for n in range(min(count, MAX_MEDIA)):
        url, content_type = params.get(f"MediaUrl{n}", "").strip(), params.get(f"MediaContentType{n}", "").strip()
        if url:
            kind = content_type.split("/")[0]
            found.append({"file_type": kind if kind in ("audio", "image", "video") else "file",
                          "content_type": content_type or None, "data_url": url})
    if params.get("Latitude") and params.get("Longitude"):  # a WhatsApp location
        place = ", ".join(p for p in (params.get("Label"), params.get("Address")) if p)
        found.append({"file_type": "location", "coordinates_lat": params["Latitude"],
                      "coordinates_long": params["Longitude"], "fallback_title": place or None})
    return tuple(found)


class TwilioClient:
    """The Messages API and media, with the account's SID and auth token."""

    channel = CHANNEL
    max_chars = MAX_CHARS

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._account = settings.twilio_account_sid or ""
        self._base = settings.twilio_api_base_url.rstrip("/")
        self._host = (urlsplit(self._base).hostname or "").lower()
        credentials = f"{self._account}:{settings.twilio_auth_token or ''}".encode()
        self._auth = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        self._http = http

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None:
        response = await self._http.post(f"{self._base}/2010-04-01/Accounts/{self._account}/Messages.json",
                                         headers=self._auth, data={"From": account_id, "To": conversation_id,
                                                                   "Body": content})
        if response.status_code >= 400:
            code = _error_code(response)
            if code in PERMANENT_ERRORS:
                raise PermanentSendError(f"Twilio error {code}: {PERMANENT_ERRORS[code]}")
            response.raise_for_status()
        sid = _json(response).get("sid")
        return sid if isinstance(sid, str) else None

    async def set_typing(self, account_id: str, conversation_id: str, on: bool, last_message_id: str | None) -> None:
        return None  # SMS has no typing indicator

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None:
        """No inbox to hand the customer to: the bot is paused on the conversation (complete_buffer),
        and the burst shows `handed_off` with its reason to an operator."""
        log.warning("buffer %s handed off on Twilio: the bot is paused on the conversation", buffer_id)

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]:
        url = attachment.get("data_url")
        if not isinstance(url, str) or (urlsplit(url).hostname or "").lower() != self._host:
            raise MediaUnavailable(f"the media url is not on Twilio's API host ({self._host})")
        return await download(self._http, url, max_bytes=max_bytes, headers=self._auth)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _error_code(response: httpx.Response) -> int | None:
    code = _json(response).get("code")
    return code if isinstance(code, int) else None
