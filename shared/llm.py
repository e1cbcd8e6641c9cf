"""One model call per burst: the conversation's history and the whole burst in, one reply out."""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

from shared.models import PromptTurn

log = logging.getLogger(__name__)


class Responder(Protocol):
    async def reply(self, turns: Sequence[PromptTurn]) -> str: ...

    async def close(self) -> None: ...


class EmptyReply(Exception):
    """The model answered with no text."""


def describe_attachment(attachment: Any) -> str:
    kind = attachment.get("file_type") or "file"
    content_type = attachment.get("content_type")
    return f"[{kind} attachment{f' ({content_type})' if content_type else ''}]"


def chat_messages(system_prompt: str, turns: Sequence[PromptTurn]) -> list[dict[str, Any]]:
    """Chat Completions messages: the system prompt, then every turn in order, text unaltered.

    A customer's attachments (a voice note has no text at all) follow the text as notes, so the
    model knows they exist; transcription and vision are not done here.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for turn in turns:
        parts = [] if turn.content is None else [turn.content]
        parts += [describe_attachment(a) for a in turn.attachments]
        if turn.role == "user" and len(parts) > 1:
            messages.append({"role": "user", "content": [{"type": "text", "text": p} for p in parts]})
        else:
            messages.append({"role": turn.role, "content": parts[0] if parts else ""})
    return messages


class OpenAIResponder:
    """Any OpenAI-compatible Chat Completions server (OPENAI_BASE_URL), via the official SDK."""

    def __init__(
        self, *, api_key: str, model: str, system_prompt: str, base_url: str | None = None, timeout: float = 30,
    ) -> None:
        from openai import AsyncOpenAI  # heavy: imported only where replies are generated

        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=1
        )
        self._model = model
        self._system_prompt = system_prompt

    async def reply(self, turns: Sequence[PromptTurn]) -> str:
        completion = await self._client.chat.completions.create(
            model=self._model, messages=chat_messages(self._system_prompt, turns)
        )
        text = (completion.choices[0].message.content or "").strip() if completion.choices else ""
        if not text:
            raise EmptyReply(f"model {self._model} returned no text")
        return text

    async def close(self) -> None:
        await self._client.close()


class OfflinePlaceholderResponder:
    """PLACEHOLDER for local use without OPENAI_API_KEY: no model is called.

    It answers with a fixed text that says what it received, so the whole path (buffer, claim,
    reply, history) can be tried without an API key. Never used when a key is configured.
    """

    async def reply(self, turns: Sequence[PromptTurn]) -> str:
        burst = [t for t in turns if t.in_burst]
        return (
            f"[offline placeholder reply: no OPENAI_API_KEY] received {len(burst)} message(s) "
            f"in this burst, {len(turns) - len(burst)} earlier turn(s) of history"
        )

    async def close(self) -> None:
        return None
