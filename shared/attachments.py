"""What the model reads for an attachment: one line of text, or nothing when the image itself is
shown. Pure (no I/O), for history turns and the burst alike.

Keys the media step adds to an attachment before this runs (shared/media.py):
  transcript    a voice note's words (also stored on the message, so it survives retries)
  inline_image  a data: URL of the image, shown to the model as an image part
  media_note    why the voice note or image is not there (off, too big, could not be fetched)
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

ASK_TO_TYPE = "ask the customer to write it"


def describe(attachment: Mapping[str, Any]) -> str | None:
    kind = attachment.get("file_type") or "file"
    if kind == "audio":
        return _voice_note(attachment)
    if kind == "image":
        return _image(attachment)
    if kind == "location":
        return _location(attachment)
    if kind == "contact":
        return _contact(attachment)
    if kind == "video":
        return f"[video{_type_of(attachment)}, not watched]"
    return f"[file: {_file_name(attachment) or 'unnamed'}{_type_of(attachment)}, not opened]"


def transcript_of(attachment: Mapping[str, Any]) -> str | None:
    """A voice note's words if it was transcribed: by us (stored), else by Chatwoot itself."""
    transcript = attachment.get("transcript")
    if transcript is None:
        transcript = (attachment.get("transcribed_text") or "").strip() or None
    return transcript


def _voice_note(attachment: Mapping[str, Any]) -> str:
    transcript = transcript_of(attachment)
    if transcript is not None:
        return f"[voice note, transcribed] {transcript}" if transcript.strip() else \
               f"[voice note with no words that could be made out; {ASK_TO_TYPE}]"
    if attachment.get("media_note"):
        return f"[voice note: {attachment['media_note']}]"
    return "[voice note, not transcribed]"


def _image(attachment: Mapping[str, Any]) -> str | None:
    if attachment.get("inline_image"):
        return None  # the model sees the image itself
    what = "sticker" if attachment.get("content_type") == "image/webp" else "image"
    note = attachment.get("media_note")
    return f"[{what}: {note}]" if note else f"[{what}{_type_of(attachment)}, not shown]"


def _location(attachment: Mapping[str, Any]) -> str:
    title = (attachment.get("fallback_title") or "").strip()
    lat, long = attachment.get("coordinates_lat"), attachment.get("coordinates_long")
    where = f"{lat}, {long}" if lat is not None and long is not None else ""
    return f"[location: {', '.join(p for p in (title, where) if p) or 'no details'}]"


def _contact(attachment: Mapping[str, Any]) -> str:
    meta = attachment.get("meta") if isinstance(attachment.get("meta"), dict) else {}
    name = " ".join(str(meta[k]) for k in ("firstName", "lastName") if meta.get(k))
    phone = (attachment.get("fallback_title") or "").strip()
    return f"[contact card: {', '.join(p for p in (name, phone) if p) or 'no details'}]"


def _type_of(attachment: Mapping[str, Any]) -> str:
    content_type = attachment.get("content_type")
    return f" ({content_type})" if content_type else ""


def _file_name(attachment: Mapping[str, Any]) -> str | None:
    if isinstance(attachment.get("file_name"), str):
        return str(attachment["file_name"])
    url = attachment.get("data_url")
    if not isinstance(url, str):
        return None
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or None
