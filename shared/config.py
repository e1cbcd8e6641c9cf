"""Settings from the environment: read once, checked at once, no I/O.

The timing numbers here are defaults: operators override them live in the `buffer_settings` table
(see supabase/migrations), and the database merges the two on every call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Mapping
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """The configuration is impossible; the message says which variable and why."""


def _number(env: Mapping[str, str], name: str, default: float, *, whole: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw} must be greater than 0")
    if whole and not value.is_integer():
        raise ConfigError(f"{name}={raw} must be a whole number")
    return value


def _text(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name, "").strip()
    return value or default


def _pairs(env: Mapping[str, str], name: str) -> dict[str, str]:
    """`key:value,key:value` (CHATWOOT_WHATSAPP_INBOXES=12:106540352242922,14:...)."""
    pairs: dict[str, str] = {}
    for item in (_text(env, name) or "").split(","):
        if not item.strip():
            continue
        key, _, value = (part.strip() for part in item.partition(":"))
        if not (key and value):
            raise ConfigError(f"{name}: {item.strip()!r} is not <Chatwoot inbox id>:<phone number id>")
        pairs[key] = value
    return pairs


STRUCTURED_OUTPUT_MODES = ("auto", "on", "off")
POOLER_MODES = ("transaction", "session", "none")
SUPABASE_TRANSACTION_POOLER_PORT = 6543


def _pooler(env: Mapping[str, str]) -> str:
    """DATABASE_POOLER as given; unset, `transaction` when DATABASE_URL is on port 6543 (the port
    of Supabase's transaction pooler, the connection string its dashboard offers for serverless)."""
    given = (_text(env, "DATABASE_POOLER") or "").lower()
    if given:
        return given
    try:
        port = urlsplit(_text(env, "DATABASE_URL") or "").port
    except ValueError:
        port = None
    return "transaction" if port == SUPABASE_TRANSACTION_POOLER_PORT else "none"


DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful customer service assistant replying on WhatsApp. The customer may have sent "
    "several short messages in a row: read them all and answer them together in one concise reply, "
    "in the customer's language."
)


BUFFER_POLICIES = ("fixed", "adaptive")


@dataclass(frozen=True)
class BufferTiming:
    """The debounce numbers, in the shape the SQL functions take as environment defaults."""

    buffer_window_seconds: float = 30
    buffer_max_age_seconds: float = 300
    buffer_max_messages: int = 50
    sweep_interval_seconds: float = 10
    fallback_flush_messages: int = 2
    fallback_flush_age_seconds: float = 5
    # fixed: the window after every message; adaptive: a share of it chosen by what the message
    # looks like and the customer's pace (public.buffer_policy; docs/benchmarks.md §5 chose fixed).
    buffer_policy: str = "fixed"

    def __post_init__(self) -> None:
        if self.buffer_policy not in BUFFER_POLICIES:
            raise ConfigError(f"BUFFER_POLICY={self.buffer_policy!r} must be one of " + ", ".join(BUFFER_POLICIES))
        if self.buffer_max_age_seconds <= self.buffer_window_seconds:
            raise ConfigError(
                f"BUFFER_MAX_AGE_SECONDS ({self.buffer_max_age_seconds:g}) must be greater than "
                f"BUFFER_WINDOW_SECONDS ({self.buffer_window_seconds:g})"
            )

    def as_defaults(self) -> dict[str, float | str]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    supabase_url: str | None = None
    supabase_service_role_key: str | None = field(default=None, repr=False)
    supabase_timeout_seconds: float = 10
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    openai_model: str = "gpt-4.1-mini"
    openai_timeout_seconds: float = 30
    openai_structured_output: str = "auto"
    openai_transcription_model: str = "gpt-4o-mini-transcribe"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    chatwoot_base_url: str | None = None
    chatwoot_api_token: str | None = field(default=None, repr=False)
    chatwoot_webhook_secret: str | None = field(default=None, repr=False)
    chatwoot_webhook_token: str | None = field(default=None, repr=False)
    chatwoot_answer_statuses: frozenset[str] = frozenset({"pending"})
    chatwoot_media_hosts: frozenset[str] = frozenset()  # besides CHATWOOT_BASE_URL's host
    chatwoot_requests_per_minute: float = 2400  # under self-hosted Chatwoot's 3000 a minute per IP
    # Chatwoot's WhatsApp inboxes (inbox id -> the Cloud API phone number id behind it): their
    # conversations get the read receipt and typing indicator through the Cloud API
    # (WHATSAPP_ACCESS_TOKEN), which Chatwoot itself never sends to WhatsApp.
    chatwoot_whatsapp_inboxes: Mapping[str, str] = field(default_factory=dict, hash=False)
    timing: BufferTiming = BufferTiming()
    history_messages: int = 20
    max_attempts: int = 5
    retry_backoff_seconds: float = 10
    lease_seconds: float = 90
    # A burst whose worker died while posting waits this long from the post for Chatwoot's echo of
    # the reply (proof it left) before it is posted again.
    send_grace_seconds: float = 120
    sweep_concurrency: int = 8
    sweep_loop_seconds: float = 62  # > EventBridge's minute: each invocation overlaps the next
    fallback_pickup_limit: int = 5
    sweeper_function_name: str | None = None
    sweep_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)  # unset: the admin API is off
    database_pool_size: int = 10
    # "transaction": DATABASE_URL is a transaction pooler (Supabase's Supavisor on port 6543,
    # PgBouncer in transaction mode); "session" or "none": a direct connection or a session pooler.
    database_pooler: str = "none"
    retention_days: float = 30
    purge_batch_size: int = 500
    bot_pause_after_human_seconds: float = 86400
    media_max_audio_mb: float = 25
    media_max_image_mb: float = 5
    media_max_images: int = 4
    # A message older than this when it arrives (a platform's redelivery after an outage) is
    # stored, as history, but not answered.
    stale_message_seconds: float = 3600
    # Meta's Graph API: WhatsApp Cloud API (/webhooks/whatsapp), Messenger and Instagram (/webhooks/meta).
    meta_graph_base_url: str = "https://graph.facebook.com"
    meta_graph_api_version: str = "v26.0"
    meta_app_secret: str | None = field(default=None, repr=False)
    whatsapp_verify_token: str | None = field(default=None, repr=False)
    whatsapp_access_token: str | None = field(default=None, repr=False)
    meta_verify_token: str | None = field(default=None, repr=False)
    instagram_app_secret: str | None = field(default=None, repr=False)
    meta_page_access_token: str | None = field(default=None, repr=False)
    instagram_access_token: str | None = field(default=None, repr=False)
    # Twilio (/webhooks/twilio), SMS and WhatsApp.
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    twilio_webhook_url: str | None = None  # the public URL Twilio calls, when a proxy rewrites the host

    @property
    def uses_supabase(self) -> bool:
        return bool(self.supabase_url and self.supabase_service_role_key)

    def __post_init__(self) -> None:
        if bool(self.supabase_url) != bool(self.supabase_service_role_key):
            raise ConfigError("SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY go together: set both or neither")
        if self.chatwoot_requests_per_minute < 6:
            raise ConfigError("CHATWOOT_REQUESTS_PER_MINUTE must be at least 6 (the budget is spent in sixths of a minute)")
        if self.database_pooler not in POOLER_MODES:
            raise ConfigError(f"DATABASE_POOLER={self.database_pooler!r} must be one of " + ", ".join(POOLER_MODES))
        if self.openai_structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ConfigError(f"OPENAI_STRUCTURED_OUTPUT={self.openai_structured_output!r} must be one of "
                              + ", ".join(STRUCTURED_OUTPUT_MODES))
        self._check_channels()
        if self.lease_seconds <= self.openai_timeout_seconds:
            raise ConfigError(
                f"LEASE_SECONDS ({self.lease_seconds:g}) must be greater than "
                f"OPENAI_TIMEOUT_SECONDS ({self.openai_timeout_seconds:g}): a lease must outlive a model call"
            )

    def _check_channels(self) -> None:
        """A channel is on when its verify token (Meta) or auth token (Twilio) is set; then
        everything it needs to verify and answer must be set too."""
        def need(channel: str, **values: str | None) -> None:
            missing = [name.upper() for name, value in values.items() if not value]
            if missing:
                raise ConfigError(f"the {channel} channel is on, and needs " + " and ".join(missing))

        if self.whatsapp_verify_token:
            need("WhatsApp (WHATSAPP_VERIFY_TOKEN is set)", meta_app_secret=self.meta_app_secret,
                 whatsapp_access_token=self.whatsapp_access_token)
        if self.meta_verify_token:
            need("Messenger/Instagram (META_VERIFY_TOKEN is set)",
                 meta_app_secret_or_instagram_app_secret=self.meta_app_secret or self.instagram_app_secret,
                 meta_page_access_token_or_instagram_access_token=self.meta_page_access_token
                 or self.instagram_access_token)
        if self.chatwoot_whatsapp_inboxes:
            need("Chatwoot's WhatsApp typing (CHATWOOT_WHATSAPP_INBOXES is set)",
                 whatsapp_access_token=self.whatsapp_access_token)
        if self.twilio_auth_token:
            need("Twilio (TWILIO_AUTH_TOKEN is set)", twilio_account_sid=self.twilio_account_sid)
        for name, url in (("META_GRAPH_BASE_URL", self.meta_graph_base_url),
                          ("TWILIO_API_BASE_URL", self.twilio_api_base_url),
                          ("TWILIO_WEBHOOK_URL", self.twilio_webhook_url)):
            if url is not None and urlsplit(url).scheme not in ("http", "https"):
                raise ConfigError(f"{name}={url!r} must be an http(s) URL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        timing = BufferTiming(
            buffer_window_seconds=_number(env, "BUFFER_WINDOW_SECONDS", 30),
            buffer_max_age_seconds=_number(env, "BUFFER_MAX_AGE_SECONDS", 300),
            buffer_max_messages=int(_number(env, "BUFFER_MAX_MESSAGES", 50, whole=True)),
            sweep_interval_seconds=_number(env, "SWEEP_INTERVAL_SECONDS", 10),
            fallback_flush_messages=int(_number(env, "FALLBACK_FLUSH_MESSAGES", 2, whole=True)),
            fallback_flush_age_seconds=_number(env, "FALLBACK_FLUSH_AGE_SECONDS", 5),
            buffer_policy=(_text(env, "BUFFER_POLICY", "fixed") or "fixed").lower(),
        )
        statuses = _text(env, "CHATWOOT_ANSWER_STATUSES", "pending") or "pending"
        return cls(
            database_url=_text(env, "DATABASE_URL"),
            supabase_url=_text(env, "SUPABASE_URL"),
            supabase_service_role_key=_text(env, "SUPABASE_SERVICE_ROLE_KEY"),
            supabase_timeout_seconds=_number(env, "SUPABASE_TIMEOUT_SECONDS", 10),
            openai_api_key=_text(env, "OPENAI_API_KEY"),
            openai_base_url=_text(env, "OPENAI_BASE_URL"),
            openai_model=_text(env, "OPENAI_MODEL", cls.openai_model) or cls.openai_model,
            openai_timeout_seconds=_number(env, "OPENAI_TIMEOUT_SECONDS", 30),
            openai_structured_output=(_text(env, "OPENAI_STRUCTURED_OUTPUT", "auto") or "auto").lower(),
            openai_transcription_model=_text(env, "OPENAI_TRANSCRIPTION_MODEL", cls.openai_transcription_model)
            or cls.openai_transcription_model,
            system_prompt=_text(env, "SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT) or DEFAULT_SYSTEM_PROMPT,
            chatwoot_base_url=(_text(env, "CHATWOOT_BASE_URL") or "").rstrip("/") or None,
            chatwoot_api_token=_text(env, "CHATWOOT_API_TOKEN"),
            chatwoot_webhook_secret=_text(env, "CHATWOOT_WEBHOOK_SECRET"),
            chatwoot_webhook_token=_text(env, "CHATWOOT_WEBHOOK_TOKEN"),
            chatwoot_answer_statuses=frozenset(s.strip() for s in statuses.split(",") if s.strip()),
            chatwoot_media_hosts=frozenset(h.strip().lower() for h in (_text(env, "CHATWOOT_MEDIA_HOSTS") or "").split(",")
                                           if h.strip()),
            chatwoot_requests_per_minute=_number(env, "CHATWOOT_REQUESTS_PER_MINUTE", 2400),
            chatwoot_whatsapp_inboxes=_pairs(env, "CHATWOOT_WHATSAPP_INBOXES"),
            timing=timing,
            history_messages=int(_number(env, "HISTORY_MESSAGES", 20, whole=True)),
            max_attempts=int(_number(env, "MAX_ATTEMPTS", 5, whole=True)),
            retry_backoff_seconds=_number(env, "RETRY_BACKOFF_SECONDS", 10),
            lease_seconds=_number(env, "LEASE_SECONDS", 90),
            send_grace_seconds=_number(env, "SEND_GRACE_SECONDS", 120),
            sweep_concurrency=int(_number(env, "SWEEP_CONCURRENCY", 8, whole=True)),
            sweep_loop_seconds=_number(env, "SWEEP_LOOP_SECONDS", 62),
            fallback_pickup_limit=int(_number(env, "FALLBACK_PICKUP_LIMIT", 5, whole=True)),
            sweeper_function_name=_text(env, "SWEEPER_FUNCTION_NAME"),
            sweep_token=_text(env, "SWEEP_TOKEN"),
            admin_token=_text(env, "ADMIN_TOKEN"),
            database_pool_size=int(_number(env, "DATABASE_POOL_SIZE", 10, whole=True)),
            database_pooler=_pooler(env),
            retention_days=_number(env, "RETENTION_DAYS", 30),
            purge_batch_size=int(_number(env, "PURGE_BATCH_SIZE", 500, whole=True)),
            bot_pause_after_human_seconds=_number(env, "BOT_PAUSE_AFTER_HUMAN_SECONDS", 86400),
            media_max_audio_mb=_number(env, "MEDIA_MAX_AUDIO_MB", 25),
            media_max_image_mb=_number(env, "MEDIA_MAX_IMAGE_MB", 5),
            media_max_images=int(_number(env, "MEDIA_MAX_IMAGES", 4, whole=True)),
            stale_message_seconds=_number(env, "STALE_MESSAGE_SECONDS", 3600),
            meta_graph_base_url=(_text(env, "META_GRAPH_BASE_URL") or cls.meta_graph_base_url).rstrip("/"),
            meta_graph_api_version=_text(env, "META_GRAPH_API_VERSION", cls.meta_graph_api_version)
            or cls.meta_graph_api_version,
            meta_app_secret=_text(env, "META_APP_SECRET"),
            whatsapp_verify_token=_text(env, "WHATSAPP_VERIFY_TOKEN"),
            whatsapp_access_token=_text(env, "WHATSAPP_ACCESS_TOKEN"),
            meta_verify_token=_text(env, "META_VERIFY_TOKEN"),
            instagram_app_secret=_text(env, "INSTAGRAM_APP_SECRET"),
            meta_page_access_token=_text(env, "META_PAGE_ACCESS_TOKEN"),
            instagram_access_token=_text(env, "INSTAGRAM_ACCESS_TOKEN"),
            twilio_api_base_url=(_text(env, "TWILIO_API_BASE_URL") or cls.twilio_api_base_url).rstrip("/"),
            twilio_account_sid=_text(env, "TWILIO_ACCOUNT_SID"),
            twilio_auth_token=_text(env, "TWILIO_AUTH_TOKEN"),
            twilio_webhook_url=_text(env, "TWILIO_WEBHOOK_URL"),
        )
