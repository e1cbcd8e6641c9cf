"""The sweeper's door to every channel: a burst's reply, typing, hand-off and media go to the
client of the burst's channel (shared/channels/<name>.py), which knows the platform's API.

Long replies are split here, once for every channel, under the channel's limit (split_reply), and
posted in order. If a later part fails after earlier ones left, PartlySent carries what is left:
the retry sends only that, so the customer never reads a part twice.

Only the sweeper imports this: never the webhook.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol

from shared.channels.base import PermanentSendError
from shared.models import ClaimedBuffer

_PART_PREFIX = re.compile(r"^\(\d+/\d+\) ")
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCE_ENDS = re.compile(r"(?<=[.!?…。])\s+")


def split_reply(text: str, limit: int) -> list[str]:
    """`text` as messages of at most `limit` characters, cut at paragraph breaks, else at sentence
    ends, else at spaces (a single word longer than a message is cut where it must be). Several
    parts carry a "(1/3) " prefix, so the customer reads them as one answer in order."""
    text = text.strip()
    if len(text) <= limit:
        return [text]
    digits = 1  # of the part count: the prefix's room depends on it
    while True:
        room = limit - len(f"({'9' * digits}/{'9' * digits}) ")
        parts = _pack(_pieces(text, room), room)
        if len(str(len(parts))) <= digits:
            return [f"({n}/{len(parts)}) {part}" for n, part in enumerate(parts, 1)]
        digits += 1


def _pieces(text: str, room: int) -> list[tuple[str, str]]:
    """The text cut into (joiner, piece) pairs no longer than `room`, coarsest cut first."""
    pieces: list[tuple[str, str]] = []
    for paragraph in (p.strip() for p in _PARAGRAPHS.split(text)):
        if not paragraph:
            continue
        joiner = "\n\n"
        for sentence in _cut(paragraph, room, _SENTENCE_ENDS):
            for chunk in _cut(sentence, room, re.compile(r"\s+")):
                for start in range(0, len(chunk), room):
                    pieces.append((joiner, chunk[start:start + room]))
                    joiner = " "
    return pieces


def _cut(text: str, room: int, boundary: re.Pattern[str]) -> list[str]:
    return [text] if len(text) <= room else [p for p in boundary.split(text) if p]


def _pack(pieces: list[tuple[str, str]], room: int) -> list[str]:
    """Greedy: as many whole pieces per message as fit."""
    parts: list[str] = []
    current = ""
    for joiner, piece in pieces:
        if current and len(current) + len(joiner) + len(piece) <= room:
            current += joiner + piece
        else:
            if current:
                parts.append(current)
            current = piece
    if current:
        parts.append(current)
    return parts


class ChannelClient(Protocol):
    channel: str
    max_chars: int  # one message's limit on the platform

    async def post_reply(self, account_id: str, conversation_id: str, content: str, buffer_id: int) -> str | None: ...

    async def set_typing(self, account_id: str, conversation_id: str, on: bool,
                         last_message_id: str | None) -> None: ...

    async def hand_off(self, account_id: str, conversation_id: str, reason: str, buffer_id: int) -> None: ...

    async def fetch_media(self, attachment: Mapping[str, Any], *, max_bytes: int) -> tuple[bytes, str | None]: ...


class PartlySent(Exception):
    """The first parts of a split reply left and a later one failed: `remainder` is what is left
    to send, `cause` why it failed."""

    def __init__(self, remainder: str, cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause} (after the first part(s) of the reply left)")
        self.remainder = remainder
        self.cause = cause


class ChannelRouter:
    def __init__(self, clients: Mapping[str, ChannelClient]) -> None:
        self._clients = dict(clients)

    @property
    def channels(self) -> list[str]:
        return sorted(self._clients)

    def client(self, channel: str) -> ChannelClient:
        client = self._clients.get(channel)
        if client is None:
            raise PermanentSendError(f"the {channel} channel is not configured in this deployment "
                                     "(its settings are not set): nothing can be sent there")
        return client

    async def post_reply(self, buffer: ClaimedBuffer, text: str) -> str | None:
        """Post the reply, split under the channel's limit, in order; returns the last part's id."""
        client = self.client(buffer.channel)
        parts = split_reply(text, client.max_chars)
        message_id = None
        for sent, part in enumerate(parts):
            try:
                message_id = await client.post_reply(buffer.account_id, buffer.conversation_id, part, buffer.buffer_id)
            except Exception as exc:
                if sent == 0:
                    raise
                raise PartlySent("\n\n".join(_PART_PREFIX.sub("", p) for p in parts[sent:]), exc) from exc
        return message_id

    async def set_typing(self, buffer: ClaimedBuffer, on: bool, last_message_id: str | None = None) -> None:
        await self.client(buffer.channel).set_typing(buffer.account_id, buffer.conversation_id, on, last_message_id)

    async def hand_off(self, buffer: ClaimedBuffer, reason: str) -> None:
        await self.client(buffer.channel).hand_off(buffer.account_id, buffer.conversation_id, reason, buffer.buffer_id)

    async def fetch_media(self, buffer: ClaimedBuffer, attachment: Mapping[str, Any], *,
                          max_bytes: int) -> tuple[bytes, str | None]:
        return await self.client(buffer.channel).fetch_media(attachment, max_bytes=max_bytes)
