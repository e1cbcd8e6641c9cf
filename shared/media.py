"""Voice notes and images of a burst, made readable for the model before it is called.

A voice note is downloaded, transcribed once (the transcript is stored on its message: a retry reads
it instead of paying again) and given to the model as the customer's words. An image or sticker is
downloaded and inlined as a data: URL (the storage URL lives minutes and the model provider may not
reach it). Whatever cannot be done (a flag is off, a size cap, a download or transcription that
fails after its retries) becomes a note the model reads: a voice note that could not be heard never
fails the burst, the model asks the customer to type instead.

Only the sweeper imports this: never the webhook.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Mapping, Protocol, Sequence

from shared.attachments import ASK_TO_TYPE, transcript_of
from shared.channels.base import MediaTooLarge
from shared.models import ClaimedBuffer, PromptTurn, RuntimeConfig

log = logging.getLogger(__name__)

MB = 1024 * 1024
# What the model provider shows as an image (OpenAI: PNG, JPEG, WEBP, non-animated GIF).
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})


@dataclass(frozen=True)
class MediaLimits:
    max_audio_bytes: int = 25 * MB  # OpenAI's transcription limit
    max_image_bytes: int = 5 * MB
    max_images: int = 4  # per burst; more are noted, not shown
    concurrency: int = 3  # downloads and transcriptions at once, per burst


class MediaSource(Protocol):
    """The channels (shared/channels/router.py): the burst's channel fetches an attachment's bytes."""

    async def fetch_media(self, buffer: ClaimedBuffer, attachment: Mapping[str, Any], *,
                          max_bytes: int) -> tuple[bytes, str | None]: ...


class Transcriber(Protocol):
    async def transcribe(self, audio: bytes, filename: str, content_type: str | None) -> str: ...


class TranscriptStore(Protocol):
    async def save_transcript(self, buffer: ClaimedBuffer, external_id: str, attachment_index: int,
                              transcript: str) -> bool: ...


class MediaPreparer:
    def __init__(self, source: MediaSource, transcriber: Transcriber, store: TranscriptStore,
                 limits: MediaLimits = MediaLimits()) -> None:
        self._source = source
        self._transcriber = transcriber
        self._store = store
        self._limits = limits

    async def prepare(self, buffer: ClaimedBuffer, turns: Sequence[PromptTurn],
                      config: RuntimeConfig) -> list[PromptTurn]:
        """The turns with the burst's attachments made readable (history is left as stored)."""
        prepared: list[PromptTurn] = []
        jobs: list[Awaitable[None]] = []
        images_left = self._limits.max_images
        for turn in turns:
            if not (turn.in_burst and turn.role == "user" and turn.attachments):
                prepared.append(turn)
                continue
            attachments = [dict(a) for a in turn.attachments]
            for index, attachment in enumerate(attachments):
                kind = attachment.get("file_type")
                if kind == "audio":
                    jobs.append(self._voice_note(buffer, turn, index, attachment, config))
                elif kind == "image":
                    if not config.image_understanding:
                        attachment["media_note"] = "not shown: image understanding is off"
                    elif images_left <= 0:
                        attachment["media_note"] = f"not shown: only {self._limits.max_images} images per burst are"
                    else:
                        images_left -= 1
                        jobs.append(self._image(buffer, attachment))
            prepared.append(dataclasses.replace(turn, attachments=tuple(attachments)))
        await _run_limited(jobs, self._limits.concurrency)
        return prepared

    async def _voice_note(self, buffer: ClaimedBuffer, turn: PromptTurn, index: int,
                          attachment: dict[str, Any], config: RuntimeConfig) -> None:
        if transcript_of(attachment) is not None:
            return  # transcribed already (by an earlier attempt, or by Chatwoot)
        if not config.voice_transcription:
            attachment["media_note"] = f"voice notes cannot be listened to here; {ASK_TO_TYPE}"
            return
        too_long = f"too long to transcribe; {ASK_TO_TYPE}"
        if _declared_over(attachment, self._limits.max_audio_bytes):
            attachment["media_note"] = too_long
            return
        try:
            audio, content_type = await self._source.fetch_media(buffer, attachment,
                                                                max_bytes=self._limits.max_audio_bytes)
            transcript = (await self._transcriber.transcribe(
                audio, _file_name(attachment, "voice"), content_type or attachment.get("content_type"))).strip()
        except MediaTooLarge:
            attachment["media_note"] = too_long
            return
        except Exception as exc:  # never fails the burst: the model asks the customer to type
            log.warning("buffer %s: voice note %s could not be transcribed: %s: %s",
                        buffer.buffer_id, index, type(exc).__name__, exc)
            attachment["media_note"] = f"it could not be heard; {ASK_TO_TYPE}"
            return
        attachment["transcript"] = transcript
        if turn.external_id is not None:
            try:
                await self._store.save_transcript(buffer, turn.external_id, index, transcript)
            except Exception:  # the reply can still use it; only a retry would transcribe again
                log.exception("buffer %s: could not store a transcript", buffer.buffer_id)

    async def _image(self, buffer: ClaimedBuffer, attachment: dict[str, Any]) -> None:
        too_large = f"not shown: larger than {self._limits.max_image_bytes / MB:.2g} MB"
        if _declared_over(attachment, self._limits.max_image_bytes):
            attachment["media_note"] = too_large
            return
        try:
            data, content_type = await self._source.fetch_media(buffer, attachment,
                                                               max_bytes=self._limits.max_image_bytes)
        except MediaTooLarge:
            attachment["media_note"] = too_large
            return
        except Exception as exc:
            log.warning("buffer %s: image could not be fetched: %s: %s", buffer.buffer_id, type(exc).__name__, exc)
            attachment["media_note"] = "it could not be loaded"
            return
        content_type = (content_type or attachment.get("content_type") or "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            attachment["media_note"] = f"not shown: {content_type or 'unknown'} is not an image format the model reads"
        elif content_type == "image/webp" and is_animated_webp(data):
            attachment["media_note"] = "an animated sticker, not shown"
        else:
            attachment["inline_image"] = f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def is_animated_webp(data: bytes) -> bool:
    """A WebP with the animation flag in its VP8X header (WhatsApp's animated stickers): model
    providers refuse those, and one refused image would fail the whole model call."""
    return (len(data) >= 21 and data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8X"
            and bool(data[20] & 0x02))


def _declared_over(attachment: dict[str, Any], max_bytes: int) -> bool:
    """Chatwoot states a file's size: one over the cap is not even downloaded."""
    size = attachment.get("file_size")
    return isinstance(size, int) and size > max_bytes


def _file_name(attachment: dict[str, Any], stem: str) -> str:
    extension = attachment.get("extension") or (attachment.get("content_type") or "").split("/")[-1] or "bin"
    return f"{stem}.{extension}"


async def _run_limited(jobs: Sequence[Awaitable[None]], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[None]) -> None:
        async with semaphore:
            await job

    await asyncio.gather(*(run(job) for job in jobs))
