-- Adaptive end of turn: how long to wait after a message depends on what it looks like and on the
-- customer's pace, instead of one fixed quiet window for every message.
--
--   buffer_policy        one row, edited in Studio: which policy (fixed | adaptive; empty = the
--                        BUFFER_POLICY environment variable) and the adaptive policy's knobs.
--   turn_cue             what a message looks like: finished, plain, greeting or unfinished.
--   next_typical_gap     the customer's typical gap between messages of a turn, one gap later.
--   turn_wait_seconds    the quiet time to wait after a message, from its cue's share.
--   ingest_message       as in 20261124000000, with the wait from the policy.
--
-- The three small functions are pure (immutable): bench/adaptive.py is their twin in Python for the
-- simulation, and tests/integration/test_end_of_turn.py holds both to the same answers on thousands
-- of random inputs.

create table public.buffer_policy (
    singleton             boolean primary key default true check (singleton),
    policy                text check (policy in ('fixed', 'adaptive')),
    finished_share        numeric not null default 0.33 check (finished_share > 0 and finished_share <= 1),
    plain_share           numeric not null default 0.67 check (plain_share > 0 and plain_share <= 1),
    greeting_share        numeric not null default 0.67 check (greeting_share > 0 and greeting_share <= 1),
    unfinished_share      numeric not null default 1 check (unfinished_share > 0 and unfinished_share <= 1),
    reference_gap_seconds numeric not null default 3 check (reference_gap_seconds > 0),
    slowest_pace          numeric not null default 2 check (slowest_pace >= 1 and slowest_pace <= 10)
);

comment on table public.buffer_policy is
    'How chatbuffer decides that the customer has finished writing. One row; edit it here, it takes effect with the next message.';
comment on column public.buffer_policy.policy is
    'fixed: wait buffer_window_seconds of quiet after every message. adaptive: wait a share of that window chosen by what the message looks like and how fast this customer writes. Empty (NULL) = the BUFFER_POLICY environment variable.';
comment on column public.buffer_policy.finished_share is
    'adaptive: share of the window to wait after a message that looks finished (a question mark, a voice note, "ok", "gracias").';
comment on column public.buffer_policy.plain_share is
    'adaptive: share of the window after text that gives nothing away.';
comment on column public.buffer_policy.greeting_share is
    'adaptive: share of the window after a greeting alone ("hola"), which is more often followed by the question than not.';
comment on column public.buffer_policy.unfinished_share is
    'adaptive: share of the window after a message that looks unfinished (ends in "...", "," or "and"; a photo without a caption).';
comment on column public.buffer_policy.reference_gap_seconds is
    'adaptive: the gap between two messages of a turn the shares are written for; a customer slower than this gets longer waits.';
comment on column public.buffer_policy.slowest_pace is
    'adaptive: waits grow with a slow customer''s pace up to this many times (never past buffer_max_age_seconds).';

insert into public.buffer_policy default values;

alter table public.buffer_policy enable row level security;
create policy api_roles_denied on public.buffer_policy as restrictive
    for all to anon, authenticated using (false) with check (false);
revoke all on public.buffer_policy from public, anon, authenticated;
grant select, update on public.buffer_policy to service_role;

alter table public.message_buffer add column typical_gap_seconds double precision;
comment on column public.message_buffer.typical_gap_seconds is
    'The customer''s typical gap between messages of a turn, as known when this burst last grew (adaptive policy); the next burst starts from it.';

-- What a message looks like. The word lists are Spanish, English and Portuguese; lower() folds
-- non-ASCII capitals only under a database locale that knows them.
create function public.turn_cue(p_content text, p_attachments jsonb)
returns text
language plpgsql immutable parallel safe
set search_path = ''
as $$
declare
    t text := lower(btrim(coalesce(p_content, ''), E' \t\r\n'));
begin
    if p_attachments @> '[{"file_type": "audio"}]' then
        return 'finished';  -- a voice note is a turn of its own
    elsif t = '' then
        -- A photo without a word: the question about it comes next.
        return case when p_attachments @> '[{"file_type": "image"}]' then 'unfinished' else 'plain' end;
    elsif t ~ '(\.\.\.|…|,|:|;|-)$'
       or t ~ '(^|\s)(y|o|pero|que|de|del|con|para|por|en|el|la|los|las|un|una|porque|and|or|but|the|a|an|to|with|for|of|if|because|so|e|mas|com)$' then
        return 'unfinished';
    elsif t ~ '^[¡!¿ ]*(hola|holi|buenas|buen día|buen dia|buenos días|buenos dias|buenas tardes|buenas noches|hi|hello|hey|good morning|good afternoon|good evening|ola|oi|olá|bom dia|boa tarde|boa noite)[ !.,?]*$' then
        return 'greeting';
    elsif t ~ '\?$'
       or t ~ '^(ok|okay|oki|vale|listo|perfecto|si|sí|yes|gracias|muchas gracias|thanks|thank you|thx|obrigado|obrigada|de acuerdo|sounds good|great|genial|👍|🙏|🙂|😊)[ !.]*$' then
        return 'finished';
    end if;
    return 'plain';
end;
$$;

-- A geometric moving average: one pause of minutes moves it no more than one quick reply.
create function public.next_typical_gap(p_typical_seconds double precision, p_gap_seconds double precision)
returns double precision
language sql immutable parallel safe
set search_path = ''
as $$
    select case when p_typical_seconds is null then greatest(p_gap_seconds, 0.1)
                else sqrt(p_typical_seconds * greatest(p_gap_seconds, 0.1)) end;
$$;

-- The quiet time after a message: the window's share for its cue (the shares are buffer_policy's
-- columns), stretched for a customer slower than the reference pace (never shortened: a quick
-- typist still pauses to read).
create function public.turn_wait_seconds(
    p_window_seconds double precision, p_cue text, p_typical_gap_seconds double precision,
    p_finished_share double precision, p_plain_share double precision, p_greeting_share double precision,
    p_unfinished_share double precision, p_reference_gap_seconds double precision, p_slowest_pace double precision)
returns double precision
language sql immutable parallel safe
set search_path = ''
as $$
    select p_window_seconds
           * case p_cue when 'finished' then p_finished_share when 'greeting' then p_greeting_share
                        when 'unfinished' then p_unfinished_share else p_plain_share end
           * least(greatest(coalesce(p_typical_gap_seconds / p_reference_gap_seconds, 1), 1), p_slowest_pace);
$$;

-- As in 20261124000000_conversation_behaviour.sql; what changed is marked "policy".
create or replace function public.ingest_message(
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

revoke execute on function public.turn_cue(text, jsonb), public.next_typical_gap(double precision, double precision),
    public.turn_wait_seconds(double precision, text, double precision, double precision, double precision, double precision, double precision, double precision, double precision)
    from public, anon, authenticated;
grant execute on function public.turn_cue(text, jsonb), public.next_typical_gap(double precision, double precision),
    public.turn_wait_seconds(double precision, text, double precision, double precision, double precision, double precision, double precision, double precision, double precision)
    to service_role;
