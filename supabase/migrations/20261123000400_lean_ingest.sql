-- A leaner ingest_message: same arguments, same result, same rules, less database CPU per
-- message (docs/benchmarks.md, "Ingest": ~215 -> ~185 us under load).
--
-- Each statement a plpgsql function runs, and each function it calls, costs executor start-up
-- and, for a function with SET search_path, a settings save and restore. The first version paid
-- that twice per message: effective_settings() (19 of its 128 us in pg_stat_statements) and the
-- debounce rule buffer_due_at() inside its UPDATE. Here the debounce rule is a plain expression,
-- and effective_settings() runs only when an operator has set a value in buffer_settings (it must
-- then check the values together); with the table empty, the caller's environment defaults are
-- used as they are.

create or replace function public.ingest_message(
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
    buffering boolean;
    fallback boolean;
    operator_settings boolean;  -- a value is set in buffer_settings
    existing_buffer bigint;
    buf_id bigint;
    buf_first_message_at timestamptz;
    buf_message_count integer;
    buf_due_at timestamptz;
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

    select coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'message_buffering'), false),
           not coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'buffer_sweeper'), false),
           exists (select 1 from public.buffer_settings s where s.setting_value is not null)
      into buffering, fallback, operator_settings
      from public.feature_flags f;
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
    if not found then  -- this message opens the conversation's next buffer
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
        cfg.error;
end;
$$;

-- The debounce rule now lives inside ingest_message, its only caller.
drop function public.buffer_due_at(
    timestamptz, timestamptz, integer, timestamptz, boolean, boolean, numeric, numeric, integer, integer, numeric);
