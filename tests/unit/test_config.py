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
        # A channel turned on without what it needs to verify and answer.
        ({"WHATSAPP_VERIFY_TOKEN": "v", "WHATSAPP_ACCESS_TOKEN": "t"}, "WhatsApp .* needs META_APP_SECRET"),
        ({"WHATSAPP_VERIFY_TOKEN": "v", "META_APP_SECRET": "s"}, "needs WHATSAPP_ACCESS_TOKEN"),
        ({"META_VERIFY_TOKEN": "v", "META_APP_SECRET": "s"}, "needs META_PAGE_ACCESS_TOKEN_OR_INSTAGRAM_ACCESS_TOKEN"),
        ({"TWILIO_AUTH_TOKEN": "t"}, "Twilio .* needs TWILIO_ACCOUNT_SID"),
        ({"TWILIO_AUTH_TOKEN": "t", "TWILIO_ACCOUNT_SID": "AC1", "TWILIO_WEBHOOK_URL": "hooks.example.com/x"},
         "TWILIO_WEBHOOK_URL='hooks.example.com/x' must be an http"),
        ({"STALE_MESSAGE_SECONDS": "0"}, "STALE_MESSAGE_SECONDS=0 must be greater than 0"),
    ],
)
def test_impossible_settings_are_refused(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env({"OPENAI_API_KEY": "sk-very-secret", "CHATWOOT_WEBHOOK_SECRET": "whsec",
                           "META_APP_SECRET": "meta-app-secret", "WHATSAPP_VERIFY_TOKEN": "wa-verify",
                           "WHATSAPP_ACCESS_TOKEN": "wa-access", "TWILIO_AUTH_TOKEN": "tw-auth",
                           "TWILIO_ACCOUNT_SID": "AC1"})
    for secret in ("sk-very-secret", "whsec", "meta-app-secret", "wa-verify", "wa-access", "tw-auth"):
        assert secret not in repr(s)


def test_channel_settings_and_their_defaults() -> None:
    s = Settings.from_env({"WHATSAPP_VERIFY_TOKEN": "v", "WHATSAPP_ACCESS_TOKEN": "t", "META_APP_SECRET": "s",
                           "META_GRAPH_BASE_URL": "http://graph.proxy.internal/", "TWILIO_API_BASE_URL": " "})
    assert (s.meta_graph_base_url, s.meta_graph_api_version) == ("http://graph.proxy.internal", "v26.0")
    assert s.twilio_api_base_url == "https://api.twilio.com" and s.stale_message_seconds == 3600
