"""No personal data in logs, at any level: a whole flow with distinctive texts and phone numbers
(a burst, a voice note, a retry after a Chatwoot error, a hand-off, a human taking over) logged at
DEBUG leaves none of them in any record; and a database error that quotes the refused row in its
DETAIL reaches the logs without it."""

from __future__ import annotations

import logging

import pytest

from shared.db.errors import StoreError
from shared.db.store import BufferStore
from shared.logs import URL_LOGGING_LIBRARIES, configure_logging
from tests.conftest import chatwoot_fixture, incoming
from tests.integration.test_takeover import human
from tests.support.far_side import FarSide
from tests.support.sql import make_due
from tests.support.webhook import Bot

PRIVATE = ("ZEBRA-7781", "+52 55 8123 4567", "5581234567", "PANGOLIN-3321", "Lucia_Fernandez", "OCELOT-991",
           "reembolso del pedido 4417", "Calle Luna 88")


async def test_a_whole_flow_logged_at_debug_shows_no_private_text(
        bot: Bot, far_side: FarSide, database_url: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    for name in ("", *URL_LOGGING_LIBRARIES):  # the levels configure_logging sets, restored afterwards
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    configure_logging()  # as every entry point does
    voice = chatwoot_fixture("message_created_incoming_audio")
    voice["attachments"][0]["data_url"] = far_side.add_media("Lucia_Fernandez_audio", b"OggS voice:PANGOLIN-3321",
                                                             "audio/ogg")
    with caplog.at_level(logging.DEBUG):
        assert await bot.status_of(incoming(1, "ZEBRA-7781, llámame al +52 55 8123 4567")) == "buffered"
        assert await bot.status_of(voice) == "buffered"
        far_side.fail_replies = 1  # the first attempt fails at Chatwoot: the error is logged
        far_side.decisions.append({"reply": "Te comunico con alguien. Calle Luna 88", "handoff": True,
                                   "handoff_reason": "reembolso del pedido 4417"})
        await make_due(database_url)
        assert await bot.sweep() == {"retry": 1}
        await make_due(database_url)
        assert await bot.sweep() == {"completed": 1}
        assert await bot.status_of(human(9, "Soy OCELOT-991, te atiendo")) in ("paused", "duplicate")
        assert await bot.status_of(incoming(10, "gracias, mi número es 5581234567")) == "held"
    logged = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "attempt 1 failed" in logged and "completed (handed_off)" in logged  # it did log, at length
    for private in PRIVATE:
        assert private not in logged, private


async def test_a_database_error_quoting_the_row_is_logged_without_it(
        store: BufferStore, caplog: pytest.LogCaptureFixture) -> None:
    """A check constraint's DETAIL is "Failing row contains (...)", with the message's text."""
    with pytest.raises(StoreError) as refused:
        await store._connector.call("hold_message", {
            "p_channel": "chatwoot", "p_account_id": "3", "p_conversation_id": "431", "p_external_id": "m1",
            "p_author": "not-an-author", "p_content": "ZEBRA-7781 +52 55 8123 4567", "p_attachments": [],
            "p_sent_at": None, "p_reason": "test"})
    assert refused.value.code == "23514"  # check_violation: the database did refuse the row
    assert "ZEBRA" not in str(refused.value) and "8123" not in str(refused.value)
    assert "hold_message" in str(refused.value)
