"""One model call per burst: the conversation's history and the whole burst in, one decision out.

The model answers through Structured Outputs (a JSON schema): the reply, whether to reply at all
("ok gracias 👍" needs none), and whether to hand the conversation to a human, with the reason.
A server without Structured Outputs (OPENAI_BASE_URL pointing elsewhere) still works: with
OPENAI_STRUCTURED_OUTPUT=auto the first refusal switches this process to plain text, the reply as
before. Raw JSON never reaches a customer: what is sent is always the decoded `reply`.
Also here: voice notes transcribed with the same SDK.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Protocol, Sequence

import orjson

from shared.attachments import describe
from shared.models import PromptTurn, Reply

log = logging.getLogger(__name__)

STRUCTURED_MODES = ("auto", "on", "off")

# Always appended to the system prompt: how to read what the conversation holds.
CONTEXT_NOTE = (
    "Text in square brackets describes what the customer sent besides text: a voice note's "
    "transcript, an image, a location, a contact card, a file. Earlier messages marked [human agent] "
    "were written by a person of the business, not by you."
)
STRUCTURED_NOTE = (
    "Answer in the JSON format given. Set should_reply to false, with an empty reply, when the "
    "customer's messages need no answer (a thank-you, an 'ok'). Set handoff to true when the customer "
    "asks for a person or you cannot help, and say why in handoff_reason for the human agent; you "
    "may still reply, for example to say that a person will continue."
)
REPLY_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "chat_reply",
        "strict": True,
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "should_reply": {"type": "boolean",
                                 "description": "false when the customer's messages need no answer"},
                "reply": {"type": "string",
                          "description": "the message to send the customer; empty when should_reply is false"},
                "handoff": {"type": "boolean", "description": "true to hand the conversation to a human agent"},
                "handoff_reason": {"type": ["string", "null"],
                                   "description": "for the human agent: why, in one sentence; null without handoff"},
            },
            "required": ["should_reply", "reply", "handoff", "handoff_reason"],
        },
    },
}
HUMAN_AGENT_PREFIX = "[human agent] "
DECISION_KEYS = frozenset(REPLY_FORMAT["json_schema"]["schema"]["properties"])


class Responder(Protocol):
    async def reply(self, turns: Sequence[PromptTurn]) -> Reply: ...

    async def transcribe(self, audio: bytes, filename: str, content_type: str | None) -> str: ...

    async def close(self) -> None: ...


class EmptyReply(Exception):
    """The model chose to reply but wrote nothing."""


class BadModelOutput(Exception):
    """The model's answer is not the JSON decision asked for; nothing is sent."""


class TranscriptionUnavailable(Exception):
    """No transcription service is configured."""


def chat_messages(system_prompt: str, turns: Sequence[PromptTurn]) -> list[dict[str, Any]]:
    """Chat Completions messages: the system prompt, then every turn in order, text unaltered.

    Attachments follow the text as one-line notes (shared/attachments.py), images as image parts.
    A human agent's replies are the business's words: assistant turns, marked as a person's.
    """
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}]
    for turn in turns:
        texts = [] if turn.content is None else [turn.content]
        if turn.role == "agent":
            texts = [HUMAN_AGENT_PREFIX + text for text in texts] or [HUMAN_AGENT_PREFIX.strip()]
        texts += [note for note in map(describe, turn.attachments) if note]
        images = [a["inline_image"] for a in turn.attachments if a.get("inline_image")]
        role = "user" if turn.role == "user" else "assistant"
        if role == "user" and (images or len(texts) > 1):
            messages.append({"role": role, "content": [{"type": "text", "text": t} for t in texts]
                             + [{"type": "image_url", "image_url": {"url": url}} for url in images]})
        else:
            messages.append({"role": role, "content": texts[0] if texts else ""})
    return messages


def decision_from_text(text: str, *, plain_allowed: bool) -> Reply:
    """Decode the model's answer. Our JSON shape is always decoded (even from a plain-text server,
    fenced in ```json or with fields missing), so raw JSON never reaches the customer; other text
    is the reply when plain text is allowed."""
    decoded = decision_json(text)
    if decoded is not None:
        return _decision(decoded)
    if not plain_allowed:
        raise BadModelOutput("the model did not answer in the JSON format asked for")
    if not text.strip():
        raise EmptyReply("the model returned no text")
    return Reply(text.strip())


def decision_json(text: str) -> Mapping[str, Any] | None:
    """The decision object in the model's text, if it wrote one: a JSON object with a `reply` and
    no keys but ours, bare or in a Markdown code fence."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.partition("\n")[2].rpartition("```")[0].strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or "reply" not in value or not set(value) <= DECISION_KEYS:
        return None
    return value


def _decision(data: Mapping[str, Any]) -> Reply:
    reply, reason = data.get("reply"), data.get("handoff_reason")
    if not isinstance(reply, (str, type(None))) or not isinstance(reason, (str, type(None))):
        raise BadModelOutput("reply and handoff_reason must be text")
    should_reply = data.get("should_reply") is not False
    handoff = data.get("handoff") is True
    text = (reply or "").strip() if should_reply else ""
    if should_reply and not text and not handoff:
        raise EmptyReply("the model chose to reply but wrote nothing")
    return Reply(text or None, ((reason or "").strip() or "the customer asked for a person") if handoff else None)


class OpenAIResponder:
    """Any OpenAI-compatible server (OPENAI_BASE_URL), via the official SDK: chat completions for
    the reply, audio transcriptions for voice notes."""

    def __init__(
        self, *, api_key: str, model: str, system_prompt: str, base_url: str | None = None, timeout: float = 30,
        structured: str = "auto", transcription_model: str = "gpt-4o-mini-transcribe",
    ) -> None:
        from openai import AsyncOpenAI  # heavy: imported only where replies are generated

        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {STRUCTURED_MODES}")
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=1)
        self._model = model
        self._system_prompt = system_prompt
        self._structured = structured
        self._transcription_model = transcription_model

    async def reply(self, turns: Sequence[PromptTurn]) -> Reply:
        if self._structured == "off":
            return await self._plain_reply(turns)
        from openai import BadRequestError, UnprocessableEntityError

        try:
            completion = await self._complete(turns, structured=True)
        except (BadRequestError, UnprocessableEntityError) as exc:
            if self._structured == "on":
                raise
            # Maybe no Structured Outputs on this server: plain text, and only if that works, for
            # good (an error unrelated to the format fails the same way and switches nothing).
            reply = await self._plain_reply(turns)
            log.warning("model server refused Structured Outputs (%s): plain-text replies from now on "
                        "(set OPENAI_STRUCTURED_OUTPUT=off to skip the attempt)", exc.status_code)
            self._structured = "off"
            return reply
        message = completion.choices[0].message if completion.choices else None
        if message is not None and getattr(message, "refusal", None):
            return Reply(None, f"the model declined to answer: {message.refusal}")
        content = (message.content or "") if message else ""
        if self._structured == "auto" and decision_json(content) is None:
            # The server ignored the format: stop asking for JSON, or a model could answer in JSON
            # that is not ours (this answer itself is prose, and sent as the reply).
            log.warning("model server ignored Structured Outputs: plain-text replies from now on")
            self._structured = "off"
        return decision_from_text(content, plain_allowed=self._structured != "on")

    async def _plain_reply(self, turns: Sequence[PromptTurn]) -> Reply:
        completion = await self._complete(turns, structured=False)
        text = (completion.choices[0].message.content or "") if completion.choices else ""
        return decision_from_text(text, plain_allowed=True)

    async def _complete(self, turns: Sequence[PromptTurn], *, structured: bool) -> Any:
        notes = [CONTEXT_NOTE, STRUCTURED_NOTE] if structured else [CONTEXT_NOTE]
        options: dict[str, Any] = {"response_format": REPLY_FORMAT} if structured else {}
        return await self._client.chat.completions.create(
            model=self._model, messages=chat_messages("\n\n".join([self._system_prompt, *notes]), turns),
            **options)

    async def transcribe(self, audio: bytes, filename: str, content_type: str | None) -> str:
        result = await self._client.audio.transcriptions.create(
            model=self._transcription_model, file=(filename, audio, content_type or "application/octet-stream"))
        return result if isinstance(result, str) else result.text

    async def close(self) -> None:
        await self._client.close()


class OfflinePlaceholderResponder:
    """PLACEHOLDER for local use without OPENAI_API_KEY: no model is called.

    It answers with a fixed text that says what it received, so the whole path (buffer, claim,
    reply, history) can be tried without an API key. Never used when a key is configured.
    """

    async def reply(self, turns: Sequence[PromptTurn]) -> Reply:
        burst = [t for t in turns if t.in_burst]
        return Reply(
            f"[offline placeholder reply: no OPENAI_API_KEY] received {len(burst)} message(s) "
            f"in this burst, {len(turns) - len(burst)} earlier turn(s) of history"
        )

    async def transcribe(self, audio: bytes, filename: str, content_type: str | None) -> str:
        raise TranscriptionUnavailable("no OPENAI_API_KEY: the offline placeholder cannot transcribe")

    async def close(self) -> None:
        return None
