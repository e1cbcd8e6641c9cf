-- Conversation behaviour: humans take over, a newer message discards a stale draft, media notes,
-- hand-off, lenient reading.
--
-- What a conversation meets, in order:
--   conversation_state          one row per conversation: its inbox (Chatwoot's conversation events
--                               carry no account, and the inbox finds it) and whether the bot is
--                               paused there (a human took over, or the bot handed off) until when.
--   ingest_message              also stores what the bot must not answer (paused, or a status that is
--                               not the bot's) as a `cancelled` burst: history, never answered.
--   record_conversation_signal  a human's message, a status change, a resolve: pause or resume the
--                               bot, and cancel what was waiting.
--   fence_reply                 the one check right before a reply leaves: the lease is still ours,
--                               the bot is not paused, and no newer customer message is waiting (else
--                               the draft is discarded and every message waits as one burst).
--   complete_buffer             replied, no reply, or handed off (which pauses the bot as a takeover).
--   mark_reply_sent, save_transcript, edit_waiting_message, record_dead_letter: small steps around.
--
-- Lock order, everywhere: the conversation's advisory lock (the one ingest_message takes), then rows.

-- --- tables -----------------------------------------------------------------------------------

create table public.conversation_state (
    channel           text not null,
    account_id        text not null,
    conversation_id   text not null,
    inbox_id          text,          -- Chatwoot's inbox id, global across accounts: with the conversation
                                     -- id it names the conversation when an event carries no account
    bot_paused_until  timestamptz,   -- the bot stays quiet here until then
    pause_reason      text,
    signal_at         timestamptz,   -- platform time of the newest pause/resume signal applied: an older
                                     -- signal delivered late changes nothing
    created_at        timestamptz not null default now(),
    updated_at        timestamptz not null default now(),
    primary key (channel, account_id, conversation_id)
);

comment on table public.conversation_state is
    'One row per conversation: where it lives and whether the bot is paused in it (a human took over, or the bot handed off).';
comment on column public.conversation_state.bot_paused_until is
    'While in the future, customer messages are stored but not answered. Cleared when the conversation is resolved or handed back (status pending). Set it to a past time to resume the bot by hand.';
comment on column public.conversation_state.signal_at is
    'Platform time of the newest takeover/resume signal applied; a signal older than this (delivered late) is ignored.';

create index conversation_state_inbox_idx on public.conversation_state (channel, inbox_id, conversation_id)
    where inbox_id is not null;

alter table public.message_buffer drop constraint message_buffer_status_check;
alter table public.message_buffer add constraint message_buffer_status_check
    check (status in ('active', 'processing', 'completed', 'failed', 'cancelled'));
alter table public.message_buffer
    add column outcome           text check (outcome in ('replied', 'no_reply', 'handed_off')),
    add column handoff_reason    text,                       -- the model's reason (a draft until completed)
    add column cancel_reason     text,
    add column cancelled_at      timestamptz,
    add column discarded_drafts  integer not null default 0, -- model calls whose reply a newer message made stale
    add column reply_sent_at     timestamptz;                -- the reply left before the hand-off finished

comment on column public.message_buffer.status is
    'active: collecting messages; processing: being answered (or waiting to retry); completed: answered (see outcome); failed: gave up, see last_error; cancelled: not answered on purpose, see cancel_reason.';
comment on column public.message_buffer.outcome is
    'For completed bursts: replied, no_reply (the model chose not to answer, e.g. "ok thanks"), or handed_off (see handoff_reason).';
comment on column public.message_buffer.discarded_drafts is
    'Replies generated and thrown away because the customer wrote again before they were sent: each cost a model call.';

-- Retention covers cancelled bursts too.
drop index public.message_buffer_finished_idx;
create index message_buffer_finished_idx on public.message_buffer (created_at)
    where status in ('completed', 'failed', 'cancelled');

alter table public.buffered_messages
    add column author text not null default 'customer' check (author in ('customer', 'agent'));
comment on column public.buffered_messages.author is
    'customer, or agent: a human''s reply (from Chatwoot or the phone), kept so the bot''s history shows what the business said.';
comment on column public.buffered_messages.attachments is
    'As the platform sent them; a voice note''s "transcript" is added once transcribed, so a retry never transcribes twice.';

create table public.webhook_dead_letters (
    id           bigint generated always as identity primary key,
    channel      text not null,
    reason       text not null,
    body         bytea not null,     -- the raw bytes as received, cut at 64 KB
    body_size    integer not null,   -- the whole body's size
    received_at  timestamptz not null default now()
);

comment on table public.webhook_dead_letters is
    'Signed webhook bodies that could not be read: kept for an operator (answered 2xx so the platform does not hand the customer to a human).';

insert into public.feature_flags (flag_name, is_enabled, description) values
    ('voice_transcription', true,
     'On: voice notes are transcribed (OPENAI_TRANSCRIPTION_MODEL) and the model reads them as the customer''s words. Off: the model is told a voice note arrived and asks the customer to type.'),
    ('image_understanding', true,
     'On: images and stickers are shown to the model (it must accept images). Off: the model is told an image arrived.');

comment on column public.feature_flags.flag_name is
    'message_buffering, buffer_sweeper, typing_indicators, voice_transcription or image_understanding (see description).';

-- --- where a message enters --------------------------------------------------------------------

-- Stores a message the bot will not answer as its own cancelled burst: history for later turns,
-- never claimed. Used by ingest_message (paused, or a status that is not the bot's) and by
-- record_conversation_signal (a human's own message).
create function public.hold_message(
    p_channel text, p_account_id text, p_conversation_id text, p_external_id text, p_author text,
    p_content text, p_attachments jsonb, p_sent_at timestamptz, p_reason text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
    buf_id bigint;
begin
    -- Re-entrant: callers already hold it; a direct call takes it here.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));
    insert into public.message_buffer (channel, account_id, conversation_id, status, message_count, due_at,
                                       cancel_reason, cancelled_at)
    values (p_channel, p_account_id, p_conversation_id, 'cancelled', 1, now(), p_reason, now())
    returning id into buf_id;
    insert into public.buffered_messages (buffer_id, channel, account_id, external_id, author, content, attachments, sent_at)
    values (buf_id, p_channel, p_account_id, p_external_id, p_author, p_content,
            coalesce(p_attachments, '[]'::jsonb), coalesce(p_sent_at, now()));
    return buf_id;
end;
$$;

-- Cancels a conversation's waiting bursts (open, or waiting to retry; never one a worker holds,
-- which fence_reply stops) with the reason; with p_sent_before, only those whose messages were all
-- sent before it. Returns how many. Every pause (takeover, hand-off, a held message) calls it; the
-- caller holds the conversation's lock.
create function public.cancel_waiting_bursts(
    p_channel text, p_account_id text, p_conversation_id text, p_reason text,
    p_sent_before timestamptz default null)
returns integer
language plpgsql
set search_path = ''
as $$
declare
    n integer;
begin
    update public.message_buffer b
       set status = 'cancelled', cancel_reason = p_reason, cancelled_at = now(),
           lease_token = null, lease_expires_at = null
     where b.channel = p_channel and b.account_id = p_account_id and b.conversation_id = p_conversation_id
       and (b.status = 'active' or (b.status = 'processing' and b.lease_token is null))
       and (p_sent_before is null or not exists (
                select 1 from public.buffered_messages m where m.buffer_id = b.id and m.sent_at > p_sent_before));
    get diagnostics n = row_count;
    return n;
end;
$$;

-- A conversation's state as ingest needs it: records where the conversation lives (its first
-- message; or the inbox, if an earlier row lacked it), and returns why the bot is paused there,
-- or null. The caller holds the conversation's lock.
create function public.remember_conversation(
    p_channel text, p_account_id text, p_conversation_id text, p_inbox_id text)
returns text
language plpgsql
set search_path = ''
as $$
declare
    state record;
begin
    select s.bot_paused_until, s.pause_reason, s.inbox_id into state
      from public.conversation_state s
     where s.channel = p_channel and s.account_id = p_account_id and s.conversation_id = p_conversation_id;
    if not found then
        insert into public.conversation_state (channel, account_id, conversation_id, inbox_id)
        values (p_channel, p_account_id, p_conversation_id, p_inbox_id);
        return null;
    end if;
    if state.inbox_id is null and p_inbox_id is not null then
        update public.conversation_state s set inbox_id = p_inbox_id
         where s.channel = p_channel and s.account_id = p_account_id and s.conversation_id = p_conversation_id;
    end if;
    return case when state.bot_paused_until > now() then state.pause_reason end;
end;
$$;

drop function public.ingest_message(text, text, text, text, text, jsonb, timestamptz, jsonb);

-- Where a message enters (the lean version of 20261123000400, plus the conversation's state): dedupe,
-- then either hold it (the bot is paused here, or p_hold_reason says the conversation is not the
-- bot's) or find/open the conversation's open buffer and push the due time.
-- Whether the bot is paused is read only when a message would open a new burst: a message that
-- joins an open burst cannot be in a paused conversation, since whatever pauses the bot (a
-- takeover, a hand-off, a held message) cancels the open bursts in the same transaction, under
-- this same lock. (fence_reply checks the pause again before anything is sent.)
create function public.ingest_message(
    p_channel text, p_account_id text, p_conversation_id text, p_external_id text,
    p_content text, p_attachments jsonb, p_sent_at timestamptz, p_defaults jsonb,
    p_inbox_id text default null, p_hold_reason text default null)
returns table (
    buffer_id bigint, accepted boolean, message_count integer, due_at timestamptz,
    flush_now boolean, others_due boolean, settings_error text, held_reason text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    cfg record;
    buffering boolean;
    fallback boolean;
    operator_settings boolean;  -- a value is set in buffer_settings
    existing_buffer bigint;
    hold text;  -- why the message is stored but not answered
    buf_id bigint;
    buf_first_message_at timestamptz;
    buf_message_count integer;
    buf_due_at timestamptz;
begin
    -- One ingest per conversation at a time: the dedupe check and the open-buffer lookup below
    -- stay true until commit, and buffer ids of a conversation grow in commit order.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));

    -- A redelivery? And the flags, and whether an operator set a timing value: one statement
    -- (each statement of a plpgsql function pays executor start-up).
    select dup.buffer_id, flags.buffering, flags.fallback, flags.operator_settings
      into existing_buffer, buffering, fallback, operator_settings
      from (select coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'message_buffering'), false)
                       as buffering,
                   not coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'buffer_sweeper'), false)
                       as fallback,
                   exists (select 1 from public.buffer_settings s where s.setting_value is not null)
                       as operator_settings
              from public.feature_flags f) flags
      left join public.buffered_messages dup
        on dup.channel = p_channel and dup.account_id = p_account_id and dup.external_id = p_external_id;
    if existing_buffer is not null then
        return query select existing_buffer, false, null::integer, null::timestamptz, false, false, null::text, null::text;
        return;
    end if;

    if p_hold_reason is not null then
        -- The message itself says the conversation is not the bot's now (its status event may be
        -- late, or lost): what still waits is not answered either.
        perform public.cancel_waiting_bursts(p_channel, p_account_id, p_conversation_id, p_hold_reason);
        perform public.remember_conversation(p_channel, p_account_id, p_conversation_id, p_inbox_id);
        return query select public.hold_message(p_channel, p_account_id, p_conversation_id, p_external_id,
                                                'customer', p_content, p_attachments, p_sent_at, p_hold_reason),
                            true, 1, null::timestamptz, false, false, null::text, p_hold_reason;
        return;
    end if;

    if operator_settings then
        select * into cfg from public.effective_settings(p_defaults);
    else
        -- The environment defaults exactly as effective_settings() starts from them: a setting
        -- added there must be added here too.
        select (p_defaults->>'buffer_window_seconds')::numeric as window_seconds,
               (p_defaults->>'buffer_max_age_seconds')::numeric as max_age_seconds,
               (p_defaults->>'buffer_max_messages')::integer as max_messages,
               (p_defaults->>'fallback_flush_messages')::integer as fallback_messages,
               (p_defaults->>'fallback_flush_age_seconds')::numeric as fallback_age_seconds,
               null::text as error
          into cfg;
    end if;

    -- An open buffer: active and its window not yet over. A due buffer is closed even before a
    -- sweeper claims it, so a burst never grows past its cap or its window.
    select b.id, b.first_message_at, b.message_count + 1
      into buf_id, buf_first_message_at, buf_message_count
      from public.message_buffer b
     where b.channel = p_channel and b.account_id = p_account_id
       and b.conversation_id = p_conversation_id
       and b.status = 'active' and b.due_at > now()
     order by b.id desc
     limit 1
       for update;
    if not found then  -- this message would open the conversation's next buffer
        hold := 'bot paused: ' || public.remember_conversation(p_channel, p_account_id, p_conversation_id,
                                                               p_inbox_id);
        if hold is not null then
            return query select public.hold_message(p_channel, p_account_id, p_conversation_id, p_external_id,
                                                    'customer', p_content, p_attachments, p_sent_at, hold),
                                true, 1, null::timestamptz, false, false, null::text, hold;
            return;
        end if;
        buf_first_message_at := now();
        buf_message_count := 1;
    end if;

    -- The debounce rule: a sliding window capped by max age; due at once at max count or with
    -- buffering off. With no scheduler (fallback), seed 004's count-or-age rule applies on top,
    -- so a webhook can flush the buffer itself.
    buf_due_at := case
        when not buffering or buf_message_count >= cfg.max_messages then now()
        when fallback and buf_message_count >= cfg.fallback_messages then now()
        else least(
            now() + make_interval(secs => cfg.window_seconds::double precision),
            buf_first_message_at + make_interval(secs => cfg.max_age_seconds::double precision),
            case when fallback
                 then buf_first_message_at + make_interval(secs => cfg.fallback_age_seconds::double precision) end)
    end;

    if buf_id is null then
        insert into public.message_buffer (channel, account_id, conversation_id, message_count, due_at)
        values (p_channel, p_account_id, p_conversation_id, 1, buf_due_at)
        returning id into buf_id;
    else
        -- None of these columns is indexed, so this is a HOT update: no index is touched.
        update public.message_buffer b
           set message_count = buf_message_count, last_message_at = now(), due_at = buf_due_at
         where b.id = buf_id;
    end if;

    insert into public.buffered_messages (buffer_id, channel, account_id, external_id, content, attachments, sent_at)
    values (buf_id, p_channel, p_account_id, p_external_id, p_content,
            coalesce(p_attachments, '[]'::jsonb), coalesce(p_sent_at, now()));

    return query select buf_id, true, buf_message_count, buf_due_at, fallback and buf_due_at <= now(),
        fallback and exists (
            select 1 from public.message_buffer o
             where o.status in ('active', 'processing') and o.due_at <= now() and o.id <> buf_id
               and (o.status = 'active' or o.lease_token is null)),
        cfg.error, null::text;
end;
$$;

-- A customer edited a message (or the platform added its transcription): what the model will read
-- changes, as long as the message is still waiting in its burst.
create function public.edit_waiting_message(
    p_channel text, p_account_id text, p_external_id text, p_content text, p_attachments jsonb)
returns table (outcome text)
language plpgsql
set search_path = ''
as $$
declare
    msg record;
    edited jsonb;
begin
    select m.buffer_id, b.conversation_id into msg
      from public.buffered_messages m join public.message_buffer b on b.id = m.buffer_id
     where m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id;
    if not found then
        return query select 'unknown';
        return;
    end if;
    -- fence_reply may move waiting messages into the burst being answered: take its lock. The
    -- buffer row is locked too, so a claim cannot take the burst between this check and the edit.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || msg.conversation_id, 0));
    perform 1 from public.message_buffer b
      join public.buffered_messages m on m.buffer_id = b.id
     where m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id
       and b.status = 'active'
       for share of b;
    if not found then
        return query select 'not_waiting';
        return;
    end if;
    -- A voice note already transcribed (the burst went back to waiting after a discarded draft)
    -- keeps its transcript: the same file is not paid for twice.
    select coalesce(jsonb_agg(case when old.item ? 'transcript'
                                        and old.item->'data_url' is not distinct from new.item->'data_url'
                                   then new.item || jsonb_build_object('transcript', old.item->'transcript')
                                   else new.item end order by new.position), '[]'::jsonb)
      into edited
      from jsonb_array_elements(coalesce(p_attachments, '[]'::jsonb)) with ordinality as new(item, position)
      left join public.buffered_messages m
        on m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id
      left join lateral jsonb_array_elements(m.attachments) with ordinality as old(item, position)
        on old.position = new.position;
    update public.buffered_messages m
       set content = p_content, attachments = edited
     where m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id
       and (m.content is distinct from p_content or m.attachments is distinct from edited);
    return query select case when found then 'updated' else 'unchanged' end;
end;
$$;

-- A signed body that could not be read: kept for an operator instead of refused.
create function public.record_dead_letter(p_channel text, p_reason text, p_body bytea, p_body_size integer)
returns table (dead_letter_id bigint)
language sql
set search_path = ''
as $$
    insert into public.webhook_dead_letters (channel, reason, body, body_size)
    values (p_channel, left(p_reason, 2000), substring(p_body from 1 for 65536), p_body_size)
    returning id;
$$;

-- --- humans and statuses -------------------------------------------------------------------------

-- A signal about who talks in a conversation:
--   takeover         a human replied (agent or phone) or the status left the bot's: pause the bot
--                    for p_pause_seconds and cancel what is waiting (a burst being answered right now
--                    is stopped by fence_reply, which sees the pause);
--   resolved         the pause ends; a waiting burst whose messages all predate the resolve is
--                    cancelled (a message written after it is answered);
--   returned_to_bot  the status came back to the bot's (pending): the pause ends.
-- p_account_id may be null (Chatwoot's conversation events carry none): the inbox finds it. A
-- signal older (by platform time) than the last one applied changes nothing. A human's message
-- (p_external_id set) is kept as history either way.
create function public.record_conversation_signal(
    p_channel text, p_account_id text, p_inbox_id text, p_conversation_id text,
    p_signal text, p_reason text, p_signal_at timestamptz, p_pause_seconds numeric,
    p_external_id text default null, p_content text default null, p_attachments jsonb default null,
    p_sent_at timestamptz default null)
returns table (outcome text, account_id text, cancelled integer)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    acct text := p_account_id;
    signal_time timestamptz := coalesce(p_signal_at, now());
    last_signal timestamptz;
    stale boolean := false;
    n integer := 0;
begin
    if p_signal is null or p_signal not in ('takeover', 'resolved', 'returned_to_bot') then
        raise exception 'unknown conversation signal %', p_signal using errcode = 'invalid_parameter_value';
    end if;
    if acct is null then
        select s.account_id into acct
          from public.conversation_state s
         where s.channel = p_channel and s.inbox_id = p_inbox_id and s.conversation_id = p_conversation_id;
        if not found then  -- never seen: nothing waits here, and its messages will carry its status
            return query select 'unknown_conversation', null::text, 0;
            return;
        end if;
    end if;
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || acct || '/' || p_conversation_id, 0));

    if p_external_id is not null and exists (
        select 1 from public.buffered_messages m
         where m.channel = p_channel and m.account_id = acct and m.external_id = p_external_id) then
        return query select 'duplicate', acct, 0;
        return;
    end if;

    select s.signal_at into last_signal
      from public.conversation_state s
     where s.channel = p_channel and s.account_id = acct and s.conversation_id = p_conversation_id
       for update;
    if not found then
        insert into public.conversation_state (channel, account_id, conversation_id, inbox_id)
        values (p_channel, acct, p_conversation_id, p_inbox_id);
    end if;
    stale := coalesce(last_signal > signal_time, false);

    if not stale then
        update public.conversation_state s
           set bot_paused_until = case when p_signal = 'takeover'
                                       then now() + make_interval(secs => p_pause_seconds::double precision) end,
               pause_reason = case when p_signal = 'takeover' then p_reason end,
               signal_at = signal_time, updated_at = now()
         where s.channel = p_channel and s.account_id = acct and s.conversation_id = p_conversation_id;
        if p_signal <> 'returned_to_bot' then
            n := public.cancel_waiting_bursts(p_channel, acct, p_conversation_id, p_reason,
                                              case when p_signal = 'resolved' then signal_time end);
        end if;
    end if;

    if p_external_id is not null then
        perform public.hold_message(p_channel, acct, p_conversation_id, p_external_id, 'agent', p_content,
                                    p_attachments, coalesce(p_sent_at, p_signal_at), p_reason);
    end if;
    return query select case when stale then 'stale'
                             when p_signal = 'takeover' then 'paused'
                             else 'resumed' end, acct, n;
end;
$$;

-- --- where a reply leaves --------------------------------------------------------------------------

-- The fence right before a reply is sent, atomic with ingest (same lock). Verdicts:
--   lease_lost  another worker owns the burst now: send nothing;
--   cancelled   the bot was paused meanwhile (a human took over): the burst is cancelled;
--   merged      the customer wrote again while the reply was being written (or since the burst
--               closed): the draft is discarded (counted), the newer messages join this burst, and
--               it waits again for the quiet window;
--   send        none of the above: the lease is extended, send now.
-- The draft is sent although newer messages wait (they become the next burst) when the burst's first
-- message is older than the max age, so a customer who never stops typing is still answered; when
-- the merged burst would pass the max count, a cap that means "answer now"; with
-- message_buffering off, which means "answer each message on its own"; and when the reply already
-- left (a hand-off being retried): only the hand-off remains to do.
create function public.fence_reply(
    p_buffer_id bigint, p_lease_token uuid, p_lease_seconds numeric, p_defaults jsonb)
returns table (verdict text)
language plpgsql
set search_path = ''
as $$
declare
    b public.message_buffer;
    cfg record;
    buffering boolean;
    paused_because text;
    newer record;
begin
    select * into b from public.message_buffer x where x.id = p_buffer_id;
    if not found then
        return query select 'lease_lost';
        return;
    end if;
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(b.channel || '/' || b.account_id || '/' || b.conversation_id, 0));
    select * into b from public.message_buffer x
     where x.id = p_buffer_id and x.lease_token = p_lease_token and x.status = 'processing'
       for update;
    if not found then
        return query select 'lease_lost';
        return;
    end if;

    select s.pause_reason into paused_because
      from public.conversation_state s
     where s.channel = b.channel and s.account_id = b.account_id and s.conversation_id = b.conversation_id
       and s.bot_paused_until > now();
    if found then
        update public.message_buffer x
           set status = 'cancelled', cancel_reason = 'bot paused before the reply was sent: ' || paused_because,
               cancelled_at = now(), lease_token = null, lease_expires_at = null
         where x.id = b.id;
        return query select 'cancelled';
        return;
    end if;

    -- The customer's newer messages: the conversation's bursts opened after this one, still waiting.
    select array_agg(n.id) as ids, sum(n.message_count)::integer as messages,
           max(n.last_message_at) as last_message_at, max(n.due_at) as due_at
      into newer
      from public.message_buffer n
     where n.channel = b.channel and n.account_id = b.account_id and n.conversation_id = b.conversation_id
       and n.id > b.id and n.status = 'active';
    select * into cfg from public.effective_settings(p_defaults);
    select coalesce(bool_or(f.is_enabled), false) into buffering
      from public.feature_flags f where f.flag_name = 'message_buffering';
    if newer.ids is not null and buffering and b.reply_sent_at is null
       and b.message_count + newer.messages <= cfg.max_messages
       and b.first_message_at > now() - make_interval(secs => cfg.max_age_seconds::double precision) then
        update public.buffered_messages m set buffer_id = b.id where m.buffer_id = any(newer.ids);
        delete from public.message_buffer n where n.id = any(newer.ids);
        -- Back to waiting, as one burst: the newer messages' window, capped by this burst's max age
        -- (due at once at the max count, as ingest would make it). The attempt is given back: a
        -- discarded draft is not a failure.
        update public.message_buffer x
           set status = 'active', message_count = x.message_count + newer.messages,
               last_message_at = newer.last_message_at,
               due_at = case when x.message_count + newer.messages >= cfg.max_messages then now()
                             else least(newer.due_at, x.first_message_at
                                        + make_interval(secs => cfg.max_age_seconds::double precision)) end,
               attempts = greatest(x.attempts - 1, 0), discarded_drafts = x.discarded_drafts + 1,
               reply_content = null, handoff_reason = null, lease_token = null, lease_expires_at = null
         where x.id = b.id;
        return query select 'merged';
        return;
    end if;

    update public.message_buffer x
       set lease_expires_at = now() + make_interval(secs => p_lease_seconds::double precision)
     where x.id = b.id;
    return query select 'send';
end;
$$;

-- The reply of a burst that also hands off has left: a retry of the hand-off must not send it again.
create function public.mark_reply_sent(p_buffer_id bigint, p_lease_token uuid)
returns table (marked boolean)
language sql
set search_path = ''
as $$
    with done as (
        update public.message_buffer b set reply_sent_at = now()
         where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
        returning 1
    )
    select exists (select 1 from done);
$$;

drop function public.complete_buffer(bigint, uuid, text);

-- Where a burst ends well: replied (p_reply sent), no_reply (the model chose silence), or
-- handed_off (to a human: the bot pauses here as after a takeover, and what waits is cancelled).
create function public.complete_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_reply text, p_outcome text default 'replied',
    p_handoff_reason text default null, p_pause_seconds numeric default null)
returns table (completed boolean)
language plpgsql
set search_path = ''
as $$
declare
    b public.message_buffer;
begin
    if p_outcome = 'replied' and p_reply is null then
        raise exception 'complete_buffer: outcome replied needs the reply' using errcode = 'invalid_parameter_value';
    end if;
    if p_outcome = 'handed_off' and p_pause_seconds is null then
        raise exception 'complete_buffer: a hand-off needs p_pause_seconds' using errcode = 'invalid_parameter_value';
    end if;
    select * into b from public.message_buffer x where x.id = p_buffer_id;
    if not found then
        return query select false;
        return;
    end if;
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(b.channel || '/' || b.account_id || '/' || b.conversation_id, 0));
    update public.message_buffer x
       set status = 'completed', outcome = p_outcome, reply_content = p_reply, handoff_reason = p_handoff_reason,
           completed_at = now(), lease_token = null, lease_expires_at = null, last_error = null
     where x.id = p_buffer_id and x.lease_token = p_lease_token and x.status = 'processing';
    if not found then
        return query select false;
        return;
    end if;
    if p_outcome = 'handed_off' then
        -- Its time counts as a signal's: a resolve delivered late but older than it changes nothing.
        insert into public.conversation_state as s (channel, account_id, conversation_id, bot_paused_until,
                                                    pause_reason, signal_at)
        values (b.channel, b.account_id, b.conversation_id,
                now() + make_interval(secs => p_pause_seconds::double precision),
                'handed off by the bot: ' || coalesce(p_handoff_reason, 'no reason given'), now())
        on conflict (channel, account_id, conversation_id) do update
           set bot_paused_until = excluded.bot_paused_until, pause_reason = excluded.pause_reason,
               signal_at = greatest(s.signal_at, excluded.signal_at), updated_at = now();
        perform public.cancel_waiting_bursts(b.channel, b.account_id, b.conversation_id, 'handed off to a human');
    end if;
    return query select true;
end;
$$;

drop function public.fail_buffer(bigint, uuid, text, integer, numeric, text);

-- A processing attempt failed: retry after exponential backoff (capped at one hour), or give up
-- with the error kept once attempts reach p_max_attempts. A decision already taken (the reply, a
-- hand-off and its reason) is kept as a draft, so a retry acts on it without another model call.
create function public.fail_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_error text, p_max_attempts integer,
    p_backoff_seconds numeric, p_reply_draft text default null, p_handoff_reason text default null)
returns table (status text, due_at timestamptz)
language sql
set search_path = ''
as $$
    update public.message_buffer b
       set status = case when b.attempts >= p_max_attempts then 'failed' else 'processing' end,
           due_at = now() + make_interval(secs => least(
                       p_backoff_seconds * power(2, greatest(b.attempts - 1, 0)), 3600)::double precision),
           last_error = left(p_error, 2000),
           reply_content = coalesce(p_reply_draft, b.reply_content),
           handoff_reason = coalesce(p_handoff_reason, b.handoff_reason),
           lease_token = null, lease_expires_at = null
     where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
    returning b.status, b.due_at;
$$;

drop function public.claim_due_buffers(integer, numeric, bigint[]);

-- Where a buffer is claimed (unchanged rule; it now also returns the hand-off draft and whether
-- the reply already left). Only a conversation's oldest unfinished buffer is claimable, so two
-- bursts of one conversation never run at once and replies keep their order.
create function public.claim_due_buffers(
    p_limit integer, p_lease_seconds numeric, p_prefer_ids bigint[] default '{}')
returns table (
    buffer_id bigint, lease_token uuid, channel text, account_id text, conversation_id text,
    attempts integer, message_count integer, due_at timestamptz, reply_draft text,
    handoff_draft text, reply_sent boolean)
language sql
set search_path = ''
as $$
    with due as (
        select b.id, b.due_at
          from public.message_buffer b
         where b.status in ('active', 'processing')
           and b.due_at <= now()
           and (b.status = 'active' or b.lease_token is null)
           and not exists (
               select 1 from public.message_buffer older
                where older.channel = b.channel and older.account_id = b.account_id
                  and older.conversation_id = b.conversation_id
                  and older.status in ('active', 'processing') and older.id < b.id)
         order by b.id = any(p_prefer_ids) desc, b.due_at
         limit p_limit
           for update of b skip locked
    )
    update public.message_buffer b
       set status = 'processing',
           lease_token = gen_random_uuid(),
           lease_expires_at = now() + make_interval(secs => p_lease_seconds::double precision),
           attempts = b.attempts + 1
      from due
     where b.id = due.id
    returning b.id, b.lease_token, b.channel, b.account_id, b.conversation_id, b.attempts,
              b.message_count, due.due_at, b.reply_content, b.handoff_reason, b.reply_sent_at is not null;
$$;

drop function public.buffer_prompt(bigint, integer);

-- The model's input for a claimed buffer: earlier turns of the conversation (customer messages,
-- our replies, and a human's replies as `agent`; the last p_history_limit of them), then this
-- burst's messages in order. external_id lets the caller store a voice note's transcript.
create function public.buffer_prompt(p_buffer_id bigint, p_history_limit integer)
returns table (role text, content text, attachments jsonb, in_burst boolean, external_id text)
language sql stable
set search_path = ''
as $$
    with this as (
        select b.* from public.message_buffer b where b.id = p_buffer_id
    ),
    turns as (
        select case m.author when 'agent' then 'agent' else 'user' end as role, m.content, m.attachments,
               m.external_id, m.buffer_id, 0 as kind, m.sent_at, m.received_at as arrival
          from this
          join public.message_buffer b
            on b.channel = this.channel and b.account_id = this.account_id
           and b.conversation_id = this.conversation_id and b.id <= this.id
          join public.buffered_messages m on m.buffer_id = b.id
        union all
        select 'assistant', b.reply_content, '[]'::jsonb, null, b.id, 1, b.completed_at, b.completed_at
          from this
          join public.message_buffer b
            on b.channel = this.channel and b.account_id = this.account_id
           and b.conversation_id = this.conversation_id and b.id < this.id
         where b.status = 'completed' and b.reply_content is not null
    ),
    history as (
        select t.* from turns t where t.buffer_id < p_buffer_id
         order by t.buffer_id desc, t.kind desc, t.sent_at desc, t.arrival desc
         limit greatest(p_history_limit, 0)
    )
    select x.role, x.content, x.attachments, x.in_burst, x.external_id from (
        select h.role, h.content, h.attachments, false as in_burst, h.external_id, h.buffer_id, h.kind,
               h.sent_at, h.arrival
          from history h
        union all
        select t.role, t.content, t.attachments, true, t.external_id, t.buffer_id, t.kind, t.sent_at, t.arrival
          from turns t where t.buffer_id = p_buffer_id
    ) x
    order by x.buffer_id, x.kind, x.sent_at, x.arrival;
$$;

-- A voice note, transcribed once: stored on its message so a retry reads it instead of paying again.
create function public.save_transcript(
    p_channel text, p_account_id text, p_external_id text, p_attachment_index integer, p_transcript text)
returns table (saved boolean)
language sql
set search_path = ''
as $$
    with done as (
        update public.buffered_messages m
           set attachments = jsonb_set(m.attachments, array[p_attachment_index::text, 'transcript'],
                                       to_jsonb(p_transcript))
         where m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id
           and jsonb_typeof(m.attachments -> p_attachment_index) = 'object'
        returning 1
    )
    select exists (select 1 from done);
$$;

-- --- operator knobs and retention ----------------------------------------------------------------

drop function public.runtime_config(jsonb);

-- Flags and effective settings in one read, for sweepers (once per pass).
create function public.runtime_config(p_defaults jsonb)
returns table (
    message_buffering boolean, buffer_sweeper boolean, typing_indicators boolean,
    voice_transcription boolean, image_understanding boolean,
    window_seconds numeric, max_age_seconds numeric, max_messages integer,
    sweep_interval_seconds numeric, fallback_messages integer, fallback_age_seconds numeric,
    settings_error text)
language sql stable
set search_path = ''
as $$
    with flags as (
        select coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'message_buffering'), false) as message_buffering,
               coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'buffer_sweeper'), false) as buffer_sweeper,
               coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'typing_indicators'), false) as typing_indicators,
               coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'voice_transcription'), false) as voice_transcription,
               coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'image_understanding'), false) as image_understanding
          from public.feature_flags f
    )
    select flags.message_buffering, flags.buffer_sweeper, flags.typing_indicators,
           flags.voice_transcription, flags.image_understanding,
           s.window_seconds, s.max_age_seconds, s.max_messages, s.sweep_interval_seconds,
           s.fallback_messages, s.fallback_age_seconds, s.error
      from flags, public.effective_settings(p_defaults) s;
$$;

-- Retention (as 20261123000200, now also cancelled bursts, dead letters, and conversations with
-- nothing left and no pause in force).
create or replace function public.purge_finished_buffers(p_older_than_seconds numeric, p_batch_size integer)
returns table (purged integer)
language plpgsql
set search_path = ''
as $$
declare
    removed integer;
    cutoff timestamptz := now() - make_interval(secs => p_older_than_seconds::double precision);
begin
    with doomed as (
        select b.id from public.message_buffer b
         where b.status in ('completed', 'failed', 'cancelled') and b.created_at < cutoff
         order by b.created_at
         limit p_batch_size
           for update skip locked
    ),
    gone_messages as (
        delete from public.buffered_messages m using doomed where m.buffer_id = doomed.id
    )
    delete from public.message_buffer b using doomed where b.id = doomed.id;
    get diagnostics removed = row_count;

    delete from public.webhook_dead_letters d
     where d.id in (select d2.id from public.webhook_dead_letters d2 where d2.received_at < cutoff
                     order by d2.id limit p_batch_size);
    delete from public.conversation_state s
     where (s.channel, s.account_id, s.conversation_id) in (
        select s2.channel, s2.account_id, s2.conversation_id from public.conversation_state s2
         where s2.updated_at < cutoff and (s2.bot_paused_until is null or s2.bot_paused_until < now())
           and not exists (select 1 from public.message_buffer b
                            where b.channel = s2.channel and b.account_id = s2.account_id
                              and b.conversation_id = s2.conversation_id)
           -- an ingest holding the conversation's lock is storing a message there right now
           and pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtextextended(
                   s2.channel || '/' || s2.account_id || '/' || s2.conversation_id, 0))
         limit p_batch_size
           for update skip locked);
    return query select removed;
end;
$$;

-- --- lock-down (as 20261123000100): only the backend's role reaches any of it --------------------

alter table public.conversation_state enable row level security;
alter table public.webhook_dead_letters enable row level security;
create policy api_roles_denied on public.conversation_state as restrictive
    for all to anon, authenticated using (false) with check (false);
create policy api_roles_denied on public.webhook_dead_letters as restrictive
    for all to anon, authenticated using (false) with check (false);
revoke all on public.conversation_state, public.webhook_dead_letters from public, anon, authenticated;
grant select, insert, update, delete on public.conversation_state, public.webhook_dead_letters to service_role;

-- Every function defined or redefined here: the backend's role only.
do $$
declare
    fn text;
begin
    foreach fn in array array[
        'public.cancel_waiting_bursts(text, text, text, text, timestamptz)',
        'public.remember_conversation(text, text, text, text)',
        'public.hold_message(text, text, text, text, text, text, jsonb, timestamptz, text)',
        'public.ingest_message(text, text, text, text, text, jsonb, timestamptz, jsonb, text, text)',
        'public.edit_waiting_message(text, text, text, text, jsonb)',
        'public.record_dead_letter(text, text, bytea, integer)',
        'public.record_conversation_signal(text, text, text, text, text, text, timestamptz, numeric, text, text, jsonb, timestamptz)',
        'public.fence_reply(bigint, uuid, numeric, jsonb)',
        'public.mark_reply_sent(bigint, uuid)',
        'public.complete_buffer(bigint, uuid, text, text, text, numeric)',
        'public.fail_buffer(bigint, uuid, text, integer, numeric, text, text)',
        'public.claim_due_buffers(integer, numeric, bigint[])',
        'public.buffer_prompt(bigint, integer)',
        'public.save_transcript(text, text, text, integer, text)',
        'public.runtime_config(jsonb)'
    ] loop
        execute format('revoke execute on function %s from public, anon, authenticated', fn);
        execute format('grant execute on function %s to service_role', fn);
    end loop;
end
$$;
