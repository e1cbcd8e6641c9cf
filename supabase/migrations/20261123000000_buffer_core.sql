-- chatbuffer core: tables, operator knobs (flags and settings) and the atomic state changes.
--
-- A conversation's inbound messages collect in one *open* buffer until the customer goes quiet.
-- Life of a buffer (message_buffer.status):
--   active      collecting messages; due_at is when its quiet window ends
--   processing  claimed by a worker (lease_token set) or waiting to retry (lease_token null, due_at = next try)
--   completed   answered: reply_content holds what we sent
--   failed      gave up after max attempts: last_error says why
-- Every transition is one function below, one statement from the caller's point of view.
-- All functions pin search_path = '' and qualify every name, so no caller can hijack them.
-- Functions on the hot path are plpgsql: it caches their plans per connection, where a SQL
-- function with a SET clause is planned again on every call.

create table public.message_buffer (
    id                bigint generated always as identity primary key,
    channel           text not null,          -- 'chatwoot', ...
    account_id        text not null,          -- the platform's tenant scope (Chatwoot account id)
    conversation_id   text not null,          -- the platform's conversation id within that scope
    status            text not null default 'active'
                      check (status in ('active', 'processing', 'completed', 'failed')),
    message_count     integer not null default 0,
    first_message_at  timestamptz not null default now(),
    last_message_at   timestamptz not null default now(),
    due_at            timestamptz not null,   -- active: end of the quiet window; processing: next try
    attempts          integer not null default 0,
    lease_token       uuid,                   -- set while a worker holds the buffer
    lease_expires_at  timestamptz,
    reply_content     text,                   -- the reply (a draft kept across retries until completed)
    last_error        text,
    created_at        timestamptz not null default now(),
    completed_at      timestamptz,
    check ((lease_token is null) = (lease_expires_at is null))
) with (fillfactor = 70);  -- room on each page, so ingest's updates stay HOT (no index writes)

comment on table public.message_buffer is
    'One row per burst of a conversation: active -> processing -> completed | failed.';

-- The claim scans only unfinished buffers (a partial index: a few rows per conversation that is
-- talking right now), so it stays fast however much history accumulates. due_at is deliberately
-- not indexed: every message moves it, and an indexed column would make each such update
-- rewrite every index of the row.
create index message_buffer_unfinished_idx
    on public.message_buffer (channel, account_id, conversation_id, id)
    where status in ('active', 'processing');
create index message_buffer_conversation_idx
    on public.message_buffer (channel, account_id, conversation_id, id);

create table public.buffered_messages (
    channel      text not null,
    account_id   text not null,
    external_id  text not null,               -- the platform's message id: a redelivery is a no-op
    buffer_id    bigint not null references public.message_buffer (id) on delete cascade,
    content      text,                        -- null for a voice note or a bare attachment
    attachments  jsonb not null default '[]'::jsonb,
    sent_at      timestamptz not null,        -- the platform's timestamp, used for ordering
    received_at  timestamptz not null default clock_timestamp(),
    primary key (channel, account_id, external_id)
);

comment on table public.buffered_messages is
    'Append-only: one row per accepted inbound message, unique on the platform''s message identity.';

create index buffered_messages_buffer_idx on public.buffered_messages (buffer_id);

create table public.feature_flags (
    flag_name    text primary key,
    is_enabled   boolean not null,
    description  text not null,
    updated_at   timestamptz not null default now()
);

comment on table public.feature_flags is
    'Operator switches, read live by every webhook call and every sweep pass: no redeploy needed.';
comment on column public.feature_flags.is_enabled is 'Toggle here; takes effect within one sweep interval.';

insert into public.feature_flags (flag_name, is_enabled, description) values
    ('message_buffering', true,
     'On: wait for the customer to go quiet and answer the burst once. Off: answer each message on its own, no waiting.'),
    ('buffer_sweeper', true,
     'On: a scheduler (EventBridge, chatbuffer serve, cron) sweeps due buffers. Off: no scheduler here, so each webhook flushes by count-or-age.'),
    ('typing_indicators', true,
     'Show "typing" in Chatwoot while a reply is being prepared.');

create table public.buffer_settings (
    setting_name   text primary key check (setting_name in (
                       'buffer_window_seconds', 'buffer_max_age_seconds', 'buffer_max_messages',
                       'sweep_interval_seconds', 'fallback_flush_messages', 'fallback_flush_age_seconds')),
    setting_value  numeric check (setting_value > 0),
    description    text not null,
    updated_at     timestamptz not null default now()
);

comment on table public.buffer_settings is
    'Timing knobs. Leave setting_value empty (NULL) to use the environment variable; a value set here wins.';
comment on column public.buffer_settings.setting_value is
    'NULL = use the environment. Must be > 0; max age must exceed the window (checked on save and on use).';

insert into public.buffer_settings (setting_name, setting_value, description) values
    ('buffer_window_seconds', null, 'Quiet time after the last message before the burst is answered (env BUFFER_WINDOW_SECONDS).'),
    ('buffer_max_age_seconds', null, 'Longest a burst may wait from its first message (env BUFFER_MAX_AGE_SECONDS).'),
    ('buffer_max_messages', null, 'A burst this long is answered at once (env BUFFER_MAX_MESSAGES).'),
    ('sweep_interval_seconds', null, 'Longest a sweeper sleeps between passes (env SWEEP_INTERVAL_SECONDS).'),
    ('fallback_flush_messages', null, 'With buffer_sweeper off: flush at this many messages (env FALLBACK_FLUSH_MESSAGES).'),
    ('fallback_flush_age_seconds', null, 'With buffer_sweeper off: flush once the first message is this old (env FALLBACK_FLUSH_AGE_SECONDS).');

-- What is wrong with a set of timing values, or null. A null value (not set) passes every check.
-- Shared by the save trigger and effective_settings.
create function public.settings_problem(
    p_window_seconds numeric, p_max_age_seconds numeric, p_max_messages numeric, p_fallback_messages numeric)
returns text
language plpgsql immutable
set search_path = ''
as $$
begin
    return case
        when p_max_age_seconds <= p_window_seconds
            then 'buffer_max_age_seconds must be greater than buffer_window_seconds'
        when p_max_messages < 1 or p_fallback_messages < 1
            then 'message counts must be at least 1'
        when p_max_messages % 1 <> 0 or p_fallback_messages % 1 <> 0
            then 'message counts must be whole numbers'
    end;
end;
$$;

-- Settings as the code uses them: the table where set, else the caller's environment defaults.
-- An impossible combination is never used: the defaults stand and `error` says what was refused.
-- Runs on every ingest, so it is plain assignments around one read of a six-row table.
create function public.effective_settings(p_defaults jsonb)
returns table (
    window_seconds numeric, max_age_seconds numeric, max_messages integer,
    sweep_interval_seconds numeric, fallback_messages integer, fallback_age_seconds numeric,
    error text)
language plpgsql stable
set search_path = ''
as $$
declare
    t_window numeric; t_max_age numeric; t_max_messages numeric;
    t_interval numeric; t_fallback_messages numeric; t_fallback_age numeric;
    problem text;
begin
    window_seconds := p_defaults->>'buffer_window_seconds';
    max_age_seconds := p_defaults->>'buffer_max_age_seconds';
    max_messages := p_defaults->>'buffer_max_messages';
    sweep_interval_seconds := p_defaults->>'sweep_interval_seconds';
    fallback_messages := p_defaults->>'fallback_flush_messages';
    fallback_age_seconds := p_defaults->>'fallback_flush_age_seconds';
    select max(s.setting_value) filter (where s.setting_name = 'buffer_window_seconds'),
           max(s.setting_value) filter (where s.setting_name = 'buffer_max_age_seconds'),
           max(s.setting_value) filter (where s.setting_name = 'buffer_max_messages'),
           max(s.setting_value) filter (where s.setting_name = 'sweep_interval_seconds'),
           max(s.setting_value) filter (where s.setting_name = 'fallback_flush_messages'),
           max(s.setting_value) filter (where s.setting_name = 'fallback_flush_age_seconds')
      into t_window, t_max_age, t_max_messages, t_interval, t_fallback_messages, t_fallback_age
      from public.buffer_settings s;
    if num_nonnulls(t_window, t_max_age, t_max_messages, t_interval, t_fallback_messages, t_fallback_age) > 0 then
        problem := public.settings_problem(
            coalesce(t_window, window_seconds), coalesce(t_max_age, max_age_seconds),
            coalesce(t_max_messages, max_messages), coalesce(t_fallback_messages, fallback_messages));
        if problem is null then
            window_seconds := coalesce(t_window, window_seconds);
            max_age_seconds := coalesce(t_max_age, max_age_seconds);
            max_messages := coalesce(t_max_messages, max_messages);
            sweep_interval_seconds := coalesce(t_interval, sweep_interval_seconds);
            fallback_messages := coalesce(t_fallback_messages, fallback_messages);
            fallback_age_seconds := coalesce(t_fallback_age, fallback_age_seconds);
        else
            error := 'buffer_settings ignored, environment used: ' || problem;
        end if;
    end if;
    return next;
end;
$$;

-- Refuse, on save in Studio, what is impossible among the values set in the table itself.
create function public.check_buffer_settings()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    problem text;
begin
    select public.settings_problem(
               max(s.setting_value) filter (where s.setting_name = 'buffer_window_seconds'),
               max(s.setting_value) filter (where s.setting_name = 'buffer_max_age_seconds'),
               max(s.setting_value) filter (where s.setting_name = 'buffer_max_messages'),
               max(s.setting_value) filter (where s.setting_name = 'fallback_flush_messages'))
      into problem
      from public.buffer_settings s;
    if problem is not null then
        raise exception 'invalid buffer_settings: %', problem using errcode = 'check_violation';
    end if;
    return null;
end;
$$;

create constraint trigger buffer_settings_consistent
    after insert or update on public.buffer_settings
    deferrable initially deferred
    for each row execute function public.check_buffer_settings();

create function public.flag_enabled(p_flag_name text)
returns boolean
language plpgsql stable
set search_path = ''
as $$
begin
    return coalesce((select f.is_enabled from public.feature_flags f where f.flag_name = p_flag_name), false);
end;
$$;

-- (Dropped by 20261123000400_lean_ingest.sql, which inlines it into ingest_message.)
-- The debounce rule, pure: when does a buffer with this history become due?
-- Sliding window capped by max age; at max count at once. With no scheduler (fallback), the
-- count-or-age rule of seed 004 applies on top, so a webhook can flush it without waiting.
create function public.buffer_due_at(
    p_first_message_at timestamptz, p_last_message_at timestamptz, p_message_count integer,
    p_now timestamptz, p_buffering boolean, p_fallback boolean,
    p_window_seconds numeric, p_max_age_seconds numeric, p_max_messages integer,
    p_fallback_messages integer, p_fallback_age_seconds numeric)
returns timestamptz
language plpgsql immutable
set search_path = ''
as $$
begin
    return case
        when not p_buffering or p_message_count >= p_max_messages then p_now
        when p_fallback and p_message_count >= p_fallback_messages then p_now
        else least(
            p_last_message_at + make_interval(secs => p_window_seconds::double precision),
            p_first_message_at + make_interval(secs => p_max_age_seconds::double precision),
            case when p_fallback
                 then p_first_message_at + make_interval(secs => p_fallback_age_seconds::double precision) end)
    end;
end;
$$;

-- Superseded by 20261123000400_lean_ingest.sql: the same contract with less work per message.
-- Where a message enters. One call: dedupe, find or open the conversation's open buffer, store the
-- message, push the due time. With no scheduler (buffer_sweeper off) it also tells the caller what
-- to flush itself: flush_now when this buffer is due already (count-or-age, max count, buffering
-- off), others_due when other conversations' buffers are due and waiting for a pass.
create function public.ingest_message(
    p_channel text, p_account_id text, p_conversation_id text, p_external_id text,
    p_content text, p_attachments jsonb, p_sent_at timestamptz, p_defaults jsonb)
returns table (
    buffer_id bigint, accepted boolean, message_count integer, due_at timestamptz,
    flush_now boolean, others_due boolean, settings_error text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    cfg record;
    buf public.message_buffer;
    existing_buffer bigint;
    buffering boolean;
    fallback boolean;
begin
    -- One ingest per conversation at a time: the dedupe check and the open-buffer lookup below
    -- stay true until commit, and buffer ids of a conversation grow in commit order.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));

    select m.buffer_id into existing_buffer
      from public.buffered_messages m
     where m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id;
    if found then
        return query select existing_buffer, false, null::integer, null::timestamptz, false, false, null::text;
        return;
    end if;

    select * into cfg from public.effective_settings(p_defaults);
    select coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'message_buffering'), false),
           not coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'buffer_sweeper'), false)
      into buffering, fallback
      from public.feature_flags f;

    -- An open buffer: active and its window not yet over. A due buffer is closed even before a
    -- sweeper claims it, so a burst never grows past its cap or its window.
    select * into buf
      from public.message_buffer b
     where b.channel = p_channel and b.account_id = p_account_id
       and b.conversation_id = p_conversation_id
       and b.status = 'active' and b.due_at > now()
     order by b.id desc
     limit 1
     for update;
    if not found then
        insert into public.message_buffer (channel, account_id, conversation_id, message_count, due_at)
        values (p_channel, p_account_id, p_conversation_id, 1,
                public.buffer_due_at(now(), now(), 1, now(), buffering, fallback, cfg.window_seconds,
                                     cfg.max_age_seconds, cfg.max_messages, cfg.fallback_messages,
                                     cfg.fallback_age_seconds))
        returning * into buf;
    else
        -- None of these columns is indexed, so this is a HOT update: no index is touched.
        update public.message_buffer b
           set message_count = b.message_count + 1,
               last_message_at = now(),
               due_at = public.buffer_due_at(b.first_message_at, now(), b.message_count + 1, now(),
                                             buffering, fallback, cfg.window_seconds, cfg.max_age_seconds,
                                             cfg.max_messages, cfg.fallback_messages, cfg.fallback_age_seconds)
         where b.id = buf.id
        returning * into buf;
    end if;

    insert into public.buffered_messages (buffer_id, channel, account_id, external_id, content, attachments, sent_at)
    values (buf.id, p_channel, p_account_id, p_external_id, p_content,
            coalesce(p_attachments, '[]'::jsonb), coalesce(p_sent_at, now()));

    return query select buf.id, true, buf.message_count, buf.due_at, fallback and buf.due_at <= now(),
        fallback and exists (
            select 1 from public.message_buffer o
             where o.status in ('active', 'processing') and o.due_at <= now() and o.id <> buf.id
               and (o.status = 'active' or o.lease_token is null)),
        cfg.error;
end;
$$;

-- Where a buffer is claimed. Due buffers (quiet window over, or retry time reached) become
-- processing under a fresh lease. Only a conversation's oldest unfinished buffer is claimable, so
-- two bursts of one conversation never run at once and replies keep their order. SKIP LOCKED lets
-- any number of sweepers race safely. p_prefer_ids (a fallback flush) go first.
create function public.claim_due_buffers(
    p_limit integer, p_lease_seconds numeric, p_prefer_ids bigint[] default '{}')
returns table (
    buffer_id bigint, lease_token uuid, channel text, account_id text, conversation_id text,
    attempts integer, message_count integer, due_at timestamptz, reply_draft text)
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
              b.message_count, due.due_at, b.reply_content;
$$;

-- How long until the next buffer becomes claimable (null: none waiting), so a sweeper can sleep
-- exactly until then. Measured by the database clock, so clock skew between hosts cannot matter.
create function public.seconds_until_next_due()
returns table (seconds double precision)
language sql stable
set search_path = ''
as $$
    -- greatest() skips nulls, so "nothing waiting" (min is null) stays null.
    select greatest(extract(epoch from min(b.due_at) - now()), 0)::double precision
      from public.message_buffer b
     where b.status in ('active', 'processing') and (b.status = 'active' or b.lease_token is null)
    having min(b.due_at) is not null;
$$;

-- The model's input for a claimed buffer: earlier turns of the conversation (inbound messages
-- and our replies, the last p_history_limit of them), then this burst's messages in order.
create function public.buffer_prompt(p_buffer_id bigint, p_history_limit integer)
returns table (role text, content text, attachments jsonb, in_burst boolean)
language sql stable
set search_path = ''
as $$
    with this as (
        select b.* from public.message_buffer b where b.id = p_buffer_id
    ),
    turns as (
        select 'user' as role, m.content, m.attachments, m.buffer_id, 0 as kind, m.sent_at, m.received_at as arrival
          from this
          join public.message_buffer b
            on b.channel = this.channel and b.account_id = this.account_id
           and b.conversation_id = this.conversation_id and b.id <= this.id
          join public.buffered_messages m on m.buffer_id = b.id
        union all
        select 'assistant', b.reply_content, '[]'::jsonb, b.id, 1, b.completed_at, b.completed_at
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
    select x.role, x.content, x.attachments, x.in_burst from (
        select h.role, h.content, h.attachments, false as in_burst, h.buffer_id, h.kind, h.sent_at, h.arrival
          from history h
        union all
        select t.role, t.content, t.attachments, true, t.buffer_id, t.kind, t.sent_at, t.arrival
          from turns t where t.buffer_id = p_buffer_id
    ) x
    order by x.buffer_id, x.kind, x.sent_at, x.arrival;
$$;

-- Keep holding a claimed buffer. False means the lease was lost (expired and reclaimed): the
-- caller must stop without sending anything, so a burst is never answered twice.
create function public.extend_lease(p_buffer_id bigint, p_lease_token uuid, p_lease_seconds numeric)
returns table (extended boolean)
language sql
set search_path = ''
as $$
    with held as (
        update public.message_buffer b
           set lease_expires_at = now() + make_interval(secs => p_lease_seconds::double precision)
         where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
        returning 1
    )
    select exists (select 1 from held);
$$;

-- Where a buffer ends well: the reply was sent; keep it as history.
create function public.complete_buffer(p_buffer_id bigint, p_lease_token uuid, p_reply text)
returns table (completed boolean)
language sql
set search_path = ''
as $$
    with done as (
        update public.message_buffer b
           set status = 'completed', reply_content = p_reply, completed_at = now(),
               lease_token = null, lease_expires_at = null, last_error = null
         where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
        returning 1
    )
    select exists (select 1 from done);
$$;

-- A processing attempt failed: retry after exponential backoff (capped at one hour), or give up
-- with the error kept once attempts reach p_max_attempts. A reply already generated is kept as a
-- draft so a retry sends the same text without another model call.
create function public.fail_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_error text, p_max_attempts integer,
    p_backoff_seconds numeric, p_reply_draft text default null)
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
           lease_token = null, lease_expires_at = null
     where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
    returning b.status, b.due_at;
$$;

-- A worker that died (or ran out of time) leaves its lease to expire: make the buffer claimable
-- again now, or fail it when it has used up its attempts.
create function public.reclaim_expired_leases(p_max_attempts integer)
returns table (buffer_id bigint, status text)
language sql
set search_path = ''
as $$
    update public.message_buffer b
       set status = case when b.attempts >= p_max_attempts then 'failed' else 'processing' end,
           due_at = now(),
           last_error = 'lease expired: the worker stopped before finishing (attempt '
                        || b.attempts || ')',
           lease_token = null, lease_expires_at = null
     where b.status = 'processing' and b.lease_token is not null and b.lease_expires_at <= now()
    returning b.id, b.status;
$$;

-- Flags and effective settings in one read, for sweepers (once per pass).
create function public.runtime_config(p_defaults jsonb)
returns table (
    message_buffering boolean, buffer_sweeper boolean, typing_indicators boolean,
    window_seconds numeric, max_age_seconds numeric, max_messages integer,
    sweep_interval_seconds numeric, fallback_messages integer, fallback_age_seconds numeric,
    settings_error text)
language sql stable
set search_path = ''
as $$
    select public.flag_enabled('message_buffering'), public.flag_enabled('buffer_sweeper'),
           public.flag_enabled('typing_indicators'),
           s.window_seconds, s.max_age_seconds, s.max_messages, s.sweep_interval_seconds,
           s.fallback_messages, s.fallback_age_seconds, s.error
      from public.effective_settings(p_defaults) s;
$$;
