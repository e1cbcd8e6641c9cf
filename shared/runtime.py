"""The process's long-lived parts, each built once on first use (no I/O or heavy import before).

A Lambda container keeps one Runtime across invocations; tests build their own from Settings that
point at fakes on the far side of HTTP. The webhook only ever touches `store` and `dispatcher`,
so the model SDK and the HTTP client are never imported on its path.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from shared.config import ConfigError, Settings
from shared.db.store import BufferStore, Connector

if TYPE_CHECKING:
    from shared.db.admin import AdminStore
    from shared.dispatch import Dispatcher
    from shared.llm import Responder
    from shared.metrics import Metrics
    from shared.channels.router import ChannelRouter
    from shared.processing import BufferProcessor
    from shared.sweep import Sweeper

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http: Any = None  # the Chatwoot client's httpx client, closed with the runtime

    @cached_property
    def store(self) -> BufferStore:
        return BufferStore(self.connector, self.settings.timing)

    @cached_property
    def admin(self) -> AdminStore:
        """The operator's reads and actions (admin API, CLI, playground), on the same connection."""
        from shared.db.admin import AdminStore

        return AdminStore(self.connector, self.settings.timing)

    @cached_property
    def connector(self) -> Connector:
        """Supabase's Data API when its URL and key are set, else a direct PostgreSQL connection."""
        s = self.settings
        if s.uses_supabase:
            from shared.db.supabase import SupabaseConnector

            return SupabaseConnector(s.supabase_url or "", s.supabase_service_role_key or "",
                                     timeout=s.supabase_timeout_seconds)
        if not s.database_url:
            raise ConfigError("set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY, or DATABASE_URL")
        from shared.db.postgres import PostgresConnector

        return PostgresConnector(s.database_url, pool_size=s.database_pool_size,
                                 transaction_pooler=s.database_pooler == "transaction")

    @cached_property
    def responder(self) -> Responder:
        s = self.settings
        if not s.openai_api_key:
            from shared.llm import OfflinePlaceholderResponder

            log.warning("OPENAI_API_KEY is not set: replies come from the OFFLINE PLACEHOLDER responder, not a model")
            return OfflinePlaceholderResponder()
        from shared.llm import OpenAIResponder

        return OpenAIResponder(
            api_key=s.openai_api_key, model=s.openai_model, system_prompt=s.system_prompt,
            base_url=s.openai_base_url, timeout=s.openai_timeout_seconds,
            structured=s.openai_structured_output, transcription_model=s.openai_transcription_model,
        )

    @cached_property
    def outbox(self) -> ChannelRouter:
        """A client for every channel whose settings are set; Chatwoot's is the console without them."""
        import httpx

        from shared.channels.router import ChannelRouter

        self._http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        return ChannelRouter({client.channel: client for client in self._channel_clients(self._http)})

    def _channel_clients(self, http: Any) -> list[Any]:
        s = self.settings
        clients: list[Any] = []
        whatsapp = None
        if s.whatsapp_access_token:
            from shared.channels.whatsapp import WhatsAppClient

            whatsapp = WhatsAppClient(s, http)
            clients.append(whatsapp)
        if s.chatwoot_base_url and s.chatwoot_api_token:
            from shared.channels.chatwoot import ChatwootClient

            clients.append(ChatwootClient(s.chatwoot_base_url, s.chatwoot_api_token, http, s.chatwoot_media_hosts,
                                          requests_per_minute=s.chatwoot_requests_per_minute,
                                          whatsapp=whatsapp if s.chatwoot_whatsapp_inboxes else None))
        else:
            from shared.channels.console import ConsoleOutbox

            log.warning("CHATWOOT_BASE_URL/CHATWOOT_API_TOKEN not set: replies are printed to this "
                        "console and kept in message_buffer.reply_content, not sent to Chatwoot")
            clients.append(ConsoleOutbox(http))
        if s.meta_page_access_token or s.instagram_access_token:
            from shared.channels.meta import INSTAGRAM, MESSENGER, MetaClient

            clients += [MetaClient(channel, s, http) for channel, token in
                        ((MESSENGER, s.meta_page_access_token), (INSTAGRAM, s.instagram_access_token)) if token]
        if s.twilio_auth_token and s.twilio_account_sid:
            from shared.channels.twilio import TwilioClient

            clients.append(TwilioClient(s, http))
        return clients

    @cached_property
    def processor(self) -> BufferProcessor:
        from shared.media import MB, MediaLimits, MediaPreparer
        from shared.processing import BufferProcessor

        s = self.settings
        limits = MediaLimits(max_audio_bytes=int(s.media_max_audio_mb * MB), max_image_bytes=int(s.media_max_image_mb * MB),
                             max_images=s.media_max_images)
        media = MediaPreparer(self.outbox, self.responder, self.store, limits)
        return BufferProcessor(
            self.store, self.responder, self.outbox, media, history_messages=s.history_messages,
            lease_seconds=s.lease_seconds, max_attempts=s.max_attempts, retry_backoff_seconds=s.retry_backoff_seconds,
            pause_seconds=s.bot_pause_after_human_seconds, metrics=self.metrics, send_grace_seconds=s.send_grace_seconds,
        )

    def new_sweeper(self) -> Sweeper:
        from shared.sweep import Sweeper

        s = self.settings
        return Sweeper(self.store, self.processor, concurrency=s.sweep_concurrency,
                       lease_seconds=s.lease_seconds, max_attempts=s.max_attempts,
                       retention_seconds=s.retention_days * 86400, purge_batch_size=s.purge_batch_size,
                       metrics=self.metrics, send_grace_seconds=s.send_grace_seconds)

    @cached_property
    def metrics(self) -> Metrics:
        """CloudWatch metrics (EMF lines) on Lambda; counted in memory elsewhere."""
        from shared.metrics import Metrics

        return Metrics()

    @cached_property
    def dispatcher(self) -> Dispatcher:
        if self.settings.sweeper_function_name and os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
            from shared.dispatch import LambdaDispatcher

            return LambdaDispatcher(self.settings.sweeper_function_name)
        from shared.dispatch import InProcessDispatcher

        return InProcessDispatcher(self.sweep_pass)

    async def sweep_pass(self, buffer_ids: Sequence[int] = (), *, fallback: bool = True) -> Counter[str]:
        """A pass someone asked for. A fallback flush takes its buffers first and a few others
        due (FALLBACK_PICKUP_LIMIT); POST /sweep (fallback False) takes everything due."""
        limit = len(buffer_ids) + self.settings.fallback_pickup_limit if fallback else None
        return await self.new_sweeper().run_once(prefer_ids=buffer_ids, limit=limit)

    async def close(self) -> None:
        if "connector" in self.__dict__:
            await self.connector.close()
        if "responder" in self.__dict__:
            await self.responder.close()
        if self._http is not None:
            await self._http.aclose()
