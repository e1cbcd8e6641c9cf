-- Channels beyond Chatwoot (issue 12): WhatsApp Cloud API, Messenger, Instagram, Twilio.
--
-- The buffer, the claim and the processing are the same for every channel: a conversation is
-- keyed by channel + business account + thread, as it always was. What is new:
--
--   buffered_messages.platform_ref  the message's id on the platform behind the channel, when it
--                        is not external_id: a Chatwoot message on a WhatsApp inbox carries its
--                        WhatsApp wamid, which the read receipt and the typing indicator need
--                        (Chatwoot shows neither on WhatsApp). ingest_message takes it and
--                        buffer_prompt returns it; both are otherwise as before.
--
--   store_stale_message  a message that arrives long after it was sent (Meta redelivers for up to
--                        7 days after an outage; Twilio and Chatwoot retry too) is kept as history
--                        and never answered, so a recovered deployment does not answer last week's
--                        messages one by one. Unlike a held message (ingest_message with
--                        p_hold_reason), it leaves the conversation's waiting bursts alone: an old
--                        message says nothing about who talks there now.

create function public.store_stale_message(
    p_channel text, p_account_id text, p_conversation_id text, p_external_id text,
    p_content text, p_attachments jsonb, p_sent_at timestamptz, p_reason text, p_inbox_id text default null)
returns table (buffer_id bigint, accepted boolean)
language plpgsql
set search_path = ''
as $$
declare
    existing bigint;
begin
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));
    select m.buffer_id into existing
      from public.buffered_messages m
     where m.channel = p_channel and m.account_id = p_account_id and m.external_id = p_external_id;
    if found then  -- a redelivery of a message we hold already
        return query select existing, false;
        return;
    end if;
    perform public.remember_conversation(p_channel, p_account_id, p_conversation_id, p_inbox_id);
    return query select public.hold_message(p_channel, p_account_id, p_conversation_id, p_external_id, 'customer',
                                            p_content, p_attachments, p_sent_at, p_reason), true;
end;
$$;

revoke execute on function public.store_stale_message(text, text, text, text, text, jsonb, timestamptz, text, text)
    from public, anon, authenticated;
grant execute on function public.store_stale_message(text, text, text, text, text, jsonb, timestamptz, text, text)
    to service_role;

-- --- the platform's own id of a message -------------------------------------------------------------

alter table public.buffered_messages add column platform_ref text;
comment on column public.buffered_messages.platform_ref is
    'The message''s id on the platform behind the channel (a Chatwoot message''s WhatsApp wamid, '
    'with the business phone number id): where the read receipt and the typing indicator go.';

drop function public.ingest_message(text, text, text, text, text, jsonb, timestamptz, jsonb, text, text);

-- As in 20261125000000_adaptive_end_of_turn.sql, with p_platform_ref stored on the message.
create function public.ingest_message(
    p_channel text, p_account_id text, p_conversation_id text, p_external_id text,
    p_content text, p_attachments jsonb, p_sent_at timestamptz, p_defaults jsonb,
    p_inbox_id text default null, p_hold_reason text default null, p_platform_ref text default null)
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
    adaptive boolean;
    finished_share double precision;  -- policy: buffer_policy's knobs, read with the flags
    plain_share double precision;
    greeting_share double precision;
    unfinished_share double precision;
    reference_gap double precision;
    slowest_pace double precision;
    existing_buffer bigint;
    hold text;  -- why the message is stored but not answered
    buf_id bigint;
    buf_first_message_at timestamptz;
    buf_message_count integer;
    buf_due_at timestamptz;
    buf_typical_gap double precision;
    wait_seconds double precision;
begin
    -- One ingest per conversation at a time: the dedupe check and the open-buffer lookup below
    -- stay true until commit, and buffer ids of a conversation grow in commit order.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));

    -- A redelivery? And the flags, the policy, and whether an operator set a timing value: one
    -- statement (each statement of a plpgsql function pays executor start-up).
    select dup.buffer_id, flags.buffering, flags.fallback, flags.operator_settings,
           -- policy: the row wins, then the environment; without the row, the fixed window.
           p.singleton is not null and coalesce(p.policy, p_defaults->>'buffer_policy', 'fixed') = 'adaptive',
           p.finished_share, p.plain_share, p.greeting_share, p.unfinished_share,
           p.reference_gap_seconds, p.slowest_pace
      into existing_buffer, buffering, fallback, operator_settings, adaptive,
           finished_share, plain_share, greeting_share, unfinished_share, reference_gap, slowest_pace
      from (select coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'message_buffering'), false)
                       as buffering,
                   not coalesce(bool_or(f.is_enabled) filter (where f.flag_name = 'buffer_sweeper'), false)
                       as fallback,
                   exists (select 1 from public.buffer_settings s where s.setting_value is not null)
                       as operator_settings
              from public.feature_flags f) flags
      left join public.buffer_policy p on true
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
    select b.id, b.first_message_at, b.message_count + 1,
           -- policy: the customer's pace, one gap later
           case when adaptive then public.next_typical_gap(b.typical_gap_seconds,
                                                           extract(epoch from now() - b.last_message_at)::double precision) end
      into buf_id, buf_first_message_at, buf_message_count, buf_typical_gap
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
        if adaptive then  -- policy: the pace the conversation's earlier bursts learnt
            select b.typical_gap_seconds into buf_typical_gap
              from public.message_buffer b
             where b.channel = p_channel and b.account_id = p_account_id
               and b.conversation_id = p_conversation_id and b.typical_gap_seconds is not null
             order by b.id desc
             limit 1;
        end if;
    end if;

    -- policy: the quiet time after this message.
    wait_seconds := case when adaptive
                         then public.turn_wait_seconds(cfg.window_seconds::double precision,
                                                       public.turn_cue(p_content, p_attachments), buf_typical_gap,
                                                       finished_share, plain_share, greeting_share, unfinished_share,
                                                       reference_gap, slowest_pace)
                         else cfg.window_seconds::double precision end;

    -- The debounce rule: the wait after the last message, capped by max age; due at once at max
    -- count or with buffering off. With no scheduler (fallback), seed 004's count-or-age rule
    -- applies on top, so a webhook can flush the buffer itself.
    buf_due_at := case
        when not buffering or buf_message_count >= cfg.max_messages then now()
        when fallback and buf_message_count >= cfg.fallback_messages then now()
        else least(
            now() + make_interval(secs => wait_seconds),
            buf_first_message_at + make_interval(secs => cfg.max_age_seconds::double precision),
            case when fallback
                 then buf_first_message_at + make_interval(secs => cfg.fallback_age_seconds::double precision) end)
    end;

    if buf_id is null then
        insert into public.message_buffer (channel, account_id, conversation_id, message_count, due_at,
                                           typical_gap_seconds)
        values (p_channel, p_account_id, p_conversation_id, 1, buf_due_at, buf_typical_gap)
        returning id into buf_id;
    else
        -- None of these columns is indexed, so this is a HOT update: no index is touched.
        update public.message_buffer b
           set message_count = buf_message_count, last_message_at = now(), due_at = buf_due_at,
               typical_gap_seconds = coalesce(buf_typical_gap, b.typical_gap_seconds)
         where b.id = buf_id;
    end if;

    insert into public.buffered_messages (buffer_id, channel, account_id, external_id, content, attachments, sent_at,
                                          platform_ref)  -- channels: platform_ref
    values (buf_id, p_channel, p_account_id, p_external_id, p_content,
            coalesce(p_attachments, '[]'::jsonb), coalesce(p_sent_at, now()), p_platform_ref);

    return query select buf_id, true, buf_message_count, buf_due_at, fallback and buf_due_at <= now(),
        fallback and exists (
            select 1 from public.message_buffer o
             where o.status in ('active', 'processing') and o.due_at <= now() and o.id <> buf_id
               and (o.status = 'active' or o.lease_token is null)),
        cfg.error, null::text;
end;
$$;

drop function public.buffer_prompt(bigint, integer);

-- As in 20261124000000_conversation_behaviour.sql, with each message's platform_ref.
create function public.buffer_prompt(p_buffer_id bigint, p_history_limit integer)
returns table (role text, content text, attachments jsonb, in_burst boolean, external_id text, platform_ref text)
language sql stable
set search_path = ''
as $$
    with this as (
        select b.* from public.message_buffer b where b.id = p_buffer_id
    ),
    turns as (
        select case m.author when 'agent' then 'agent' else 'user' end as role, m.content, m.attachments,
               m.external_id, m.platform_ref, m.buffer_id, 0 as kind, m.sent_at, m.received_at as arrival
          from this
          join public.message_buffer b
            on b.channel = this.channel and b.account_id = this.account_id
           and b.conversation_id = this.conversation_id and b.id <= this.id
          join public.buffered_messages m on m.buffer_id = b.id
        union all
        select 'assistant', b.reply_content, '[]'::jsonb, null, null, b.id, 1, b.completed_at, b.completed_at
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
    select x.role, x.content, x.attachments, x.in_burst, x.external_id, x.platform_ref from (
        select h.role, h.content, h.attachments, false as in_burst, h.external_id, h.platform_ref, h.buffer_id,
               h.kind, h.sent_at, h.arrival
          from history h
        union all
        select t.role, t.content, t.attachments, true, t.external_id, t.platform_ref, t.buffer_id, t.kind,
               t.sent_at, t.arrival
          from turns t where t.buffer_id = p_buffer_id
    ) x
    order by x.buffer_id, x.kind, x.sent_at, x.arrival;
$$;
