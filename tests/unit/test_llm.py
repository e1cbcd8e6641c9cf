from __future__ import annotations

from shared.llm import OfflinePlaceholderResponder, chat_messages
from shared.models import PromptTurn


def turn(role: str, content: str | None, *attachments: dict, in_burst: bool = True) -> PromptTurn:
    return PromptTurn(role, content, tuple(attachments), in_burst)


def test_history_then_burst_in_order_and_unaltered() -> None:
    turns = [
        turn("user", "Hola", in_burst=False),
        turn("assistant", "¡Hola! ¿En qué te ayudo?", in_burst=False),
        turn("user", "  do you have these shoes? "),
        turn("user", "in size 27?"),
    ]
    messages = chat_messages("SYSTEM", turns)
    assert messages == [
        {"role": "system", "content": "SYSTEM"},
        {"role": "user", "content": "Hola"},
        {"role": "assistant", "content": "¡Hola! ¿En qué te ayudo?"},
        {"role": "user", "content": "  do you have these shoes? "},
        {"role": "user", "content": "in size 27?"},
    ]


def test_attachments_are_noted_after_the_text() -> None:
    voice = turn("user", None, {"file_type": "audio", "content_type": "audio/ogg", "data_url": "https://x"})
    photo = turn("user", "¿talla 27?", {"file_type": "image", "content_type": "image/jpeg"})
    messages = chat_messages("S", [voice, photo])
    assert messages[1] == {"role": "user", "content": "[audio attachment (audio/ogg)]"}
    assert messages[2] == {"role": "user", "content": [
        {"type": "text", "text": "¿talla 27?"}, {"type": "text", "text": "[image attachment (image/jpeg)]"}]}


async def test_offline_placeholder_says_it_is_one() -> None:
    reply = await OfflinePlaceholderResponder().reply([turn("user", "a"), turn("user", "b", in_burst=False)])
    assert "offline placeholder" in reply and "1 message(s)" in reply and "1 earlier turn" in reply
