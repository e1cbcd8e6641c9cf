"""Meta's Graph platform, as WhatsApp's Cloud API, Messenger and Instagram share it: the
subscription handshake, the X-Hub-Signature-256 over the raw body, and a Graph call whose errors
say whether a retry could help (../CHANNELS.md).

Not a channel itself: shared/channels/whatsapp.py and shared/channels/meta.py build on it.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from shared.channels.base import BadSignature, PermanentSendError

if TYPE_CHECKING:
    import httpx

# The platform's refusal to deliver outside the 24-hour customer-service window: retrying will
# not help until the customer writes again. WhatsApp: 131047 ("Re-engagement message");
# Messenger: (#10) subcode 2018278 ("sent outside of allowed window"); Instagram: subcode 2534022.
OUTSIDE_WINDOW_CODES = frozenset({131047})
OUTSIDE_WINDOW_SUBCODES = frozenset({2018278, 2534022})


def sign(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 header value for this body (tests and the playground use it too)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secrets: Iterable[str], signature: str | None, body: bytes) -> None:
    """Raise BadSignature unless one of the app secrets signs these exact bytes."""
    if not signature:
        raise BadSignature("missing X-Hub-Signature-256")
    given = signature.strip().encode("utf-8", "replace")
    if not any(hmac.compare_digest(sign(secret, body).encode(), given) for secret in secrets if secret):
        raise BadSignature("X-Hub-Signature-256 does not match the body")


def handshake(verify_token: str, query: Mapping[str, str]) -> str:
    """The subscription check Meta makes when a webhook is saved: the bare `hub.challenge` when
    the token matches; else BadSignature (answered 403)."""
    given = query.get("hub.verify_token") or ""
    if query.get("hub.mode") != "subscribe" or not hmac.compare_digest(
            verify_token.encode(), given.encode("utf-8", "replace")):
        raise BadSignature("wrong hub.mode or hub.verify_token")
    challenge = query.get("hub.challenge")
    if not challenge:
        raise BadSignature("no hub.challenge")
    return challenge


def graph_url(base_url: str, version: str, *path: str) -> str:
    return "/".join((base_url.rstrip("/"), version.strip("/"), *path))


async def post(http: httpx.AsyncClient, url: str, token: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """POST to the Graph API with a bearer token. A refusal outside the 24-hour window raises
    PermanentSendError; any other error raises httpx.HTTPStatusError (a retry may help)."""
    response = await http.post(url, headers={"Authorization": f"Bearer {token}"}, json=body)
    if response.status_code >= 400:
        error = _error_of(response)
        said = (f"Graph error {error.get('code')}: {error.get('message') or error.get('title') or ''}".strip()
                if error else "no Graph error in the answer")
        if error.get("code") in OUTSIDE_WINDOW_CODES or error.get("error_subcode") in OUTSIDE_WINDOW_SUBCODES:
            raise PermanentSendError(f"outside the 24-hour customer-service window: {said}")
        import httpx  # the sweeper's path only

        # Meta's own words go with the status into last_error, for the operator.
        raise httpx.HTTPStatusError(f"HTTP {response.status_code} from the Graph API: {said}",
                                    request=response.request, response=response)
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _error_of(response: httpx.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}
