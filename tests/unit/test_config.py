from __future__ import annotations

import pytest

from shared.config import ConfigError, Settings


def test_defaults_match_the_documented_interface() -> None:
    s = Settings.from_env({})
    t = s.timing
    assert (t.buffer_window_seconds, t.buffer_max_age_seconds, t.buffer_max_messages) == (30, 300, 50)
    assert (t.sweep_interval_seconds, t.fallback_flush_messages, t.fallback_flush_age_seconds) == (10, 2, 5)
    assert t.buffer_policy == "fixed" and t.as_defaults()["buffer_policy"] == "fixed"
    assert s.chatwoot_answer_statuses == frozenset({"pending"})


def test_environment_is_read() -> None:
    s = Settings.from_env({"BUFFER_WINDOW_SECONDS": "12.5", "BUFFER_MAX_MESSAGES": "7", "BUFFER_POLICY": "Adaptive",
                           "CHATWOOT_BASE_URL": "https://chat.example/", "CHATWOOT_ANSWER_STATUSES": "pending, open"})
    assert s.timing.buffer_window_seconds == 12.5
    assert s.timing.buffer_max_messages == 7
    assert s.timing.buffer_policy == "adaptive"
    assert s.chatwoot_base_url == "https://chat.example"
    assert s.chatwoot_answer_statuses == frozenset({"pending", "open"})


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"BUFFER_WINDOW_SECONDS": "300"}, "BUFFER_MAX_AGE_SECONDS .* must be greater than BUFFER_WINDOW_SECONDS"),
        ({"BUFFER_MAX_AGE_SECONDS": "10", "BUFFER_WINDOW_SECONDS": "20"}, "must be greater"),
        ({"BUFFER_WINDOW_SECONDS": "-1"}, "BUFFER_WINDOW_SECONDS=-1 must be greater than 0"),
        ({"BUFFER_MAX_MESSAGES": "0"}, "must be greater than 0"),
        ({"BUFFER_MAX_MESSAGES": "2.5"}, "whole number"),
        ({"SWEEP_INTERVAL_SECONDS": "soon"}, "not a number"),
        ({"LEASE_SECONDS": "20"}, "LEASE_SECONDS"),
        ({"BUFFER_POLICY": "smart"}, "BUFFER_POLICY='smart' must be one of fixed, adaptive"),
    ],
)
def test_impossible_settings_are_refused(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env({"OPENAI_API_KEY": "sk-very-secret", "CHATWOOT_WEBHOOK_SECRET": "whsec"})
    assert "sk-very-secret" not in repr(s) and "whsec" not in repr(s)
