"""The console: where replies go when no channel is configured (local use, `chatbuffer serve`).

Same shape as a channel's client (post, typing, hand off, media), so the whole path can be tried
without Chatwoot: replies and hand-offs are printed, and stored as history as usual. Attachments in
Chatwoot's payloads are public URLs, fetched as Chatwoot's client does (no host restriction here:
this is a developer's machine).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Mapping, TextIO

from shared.channels.chatwoot import MediaUnavailable, fetch_attachment

if TYPE_CHECKING:
    import httpx


class ConsoleOutbox:
    channel = "chatwoot"  # it stands in for Chatwoot
    max_chars = 100_000  # a terminal: nothing to split

    def __init__(self, http: httpx.AsyncClient | None = None, stream: TextIO | None = None) -> None:
        self._http = http
        self._stream = stream

    def _print(self, text: str) -> None:
        print(text, file=self._stream or sys.stdout, flush=True)

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None:
        self._print(f"[reply to chatwoot account {account_id} conversation {conversation_id}, "
                    f"buffer {buffer_id}]\n{content}")
        return None  # a console has no message ids

    async def set_typing(self, account_id: str, conversation_id: str, on: bool,
                         last_message_id: str | None = None) -> None:
        return None

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None:
        self._print(f"[hand-off to a human: chatwoot account {account_id} conversation {conversation_id}, "
                    f"buffer {buffer_id}] {reason}")

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]:
        url = attachment.get("data_url")
        if self._http is None or not isinstance(url, str) or not url:
            raise MediaUnavailable("no HTTP client for media in this console, or no data_url")
        return await fetch_attachment(self._http, url, max_bytes=max_bytes)
