-- Production hardening: rate limits, and a reply delivered exactly once.
--
-- Rate limits: a 429 from the model provider or a channel puts the burst back until the time the
-- server asked for (Retry-After), without counting the attempt: being told to slow down is not a
-- failure, and must not exhaust MAX_ATTEMPTS during a provider's busy hour.
--
-- Exactly once: a reply could be posted twice when the process died, or the database failed,
-- between posting it and recording it (the lease ran out, and the next worker posted again). Now:
--   fence_reply   stores the decision (the draft) and stamps sending_since before the post;
--   the post      Chatwoot answers with its message id, kept by complete_buffer;
--   the echo      Chatwoot sends every message the bot posts back to the webhook, with our marker
--                 (the burst's id): record_reply_echo notes that the reply left;
--   a reclaim     of a burst whose reply may have left (sending_since set, no echo yet) waits
--                 p_send_grace_seconds from the post for that echo before the post is tried again,
--                 and a burst whose echo came is completed without posting again.
-- A failure caught while posting (Chatwoot answered an error) clears sending_since: nothing left.

-- sending_since and platform_message_id are added by 20261124100000 (its admin views show them).

-- --- attempts that did not succeed --------------------------------------------------------------

-- fail_buffer, as in 20261124000000, keeps every failed attempt's error in attempt_errors, counts a
-- model call the fence did not count (p_model_called: the attempt failed between the model and the
-- fence), and takes p_retry_after_seconds for rate limits (for the burst's first hour; a provider
-- still refusing after that is an outage, and the attempts count so it ends `failed`, visibly): when it is given, the
-- burst is due again after it, the attempt is given back (so it never ends `failed` for it), and
-- the entry in attempt_errors says `deferred`. p_delivery says what became of the reply's post:
--   none     never began, or refused (a 4xx): sending_since is cleared, a retry posts at once;
--   unknown  no answer, or a 5xx: it may have arrived, so the retry waits p_send_grace_seconds from
--            the post for Chatwoot's echo (which marks it sent) before posting again;
--   left     it succeeded and a later step failed: the reply is marked sent, never posted again.

drop function public.fail_buffer(bigint, uuid, text, integer, numeric, text, text);

create function public.fail_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_error text, p_max_attempts integer,
    p_backoff_seconds numeric, p_reply_draft text default null, p_handoff_reason text default null,
    p_model_called boolean default false, p_retry_after_seconds numeric default null,
    p_delivery text default 'none', p_send_grace_seconds numeric default 0)
returns table (status text, due_at timestamptz)
language sql
set search_path = ''
as $$
    with told as (  -- a Retry-After is forgiven for the burst's first hour, then counts like any failure
        select p_retry_after_seconds is not null and b.first_message_at > now() - interval '1 hour' as forgiven
          from public.message_buffer b where b.id = p_buffer_id
    )
    update public.message_buffer b
       set status = case when not told.forgiven and b.attempts >= p_max_attempts then 'failed'
                         else 'processing' end,
           due_at = greatest(
                       now() + make_interval(secs => least(
                           case when p_retry_after_seconds is not null then greatest(p_retry_after_seconds, 0)
                                else p_backoff_seconds * power(2, greatest(b.attempts - 1, 0)) end, 3600)::double precision),
                       -- the post may have arrived: its echo gets the grace before anything is posted again
                       case when p_delivery = 'unknown' and b.sending_since is not null
                            then b.sending_since + make_interval(secs => p_send_grace_seconds::double precision) end),
           attempts = case when told.forgiven then greatest(b.attempts - 1, 0) else b.attempts end,
           last_error = left(p_error, 2000),
           attempt_errors = b.attempt_errors || jsonb_build_object(
                               'attempt', b.attempts, 'at', now(), 'error', left(p_error, 2000),
                               'deferred', p_retry_after_seconds is not null),
           model_calls = b.model_calls + case when p_model_called then 1 else 0 end,
           reply_content = coalesce(p_reply_draft, b.reply_content),
           handoff_reason = coalesce(p_handoff_reason, b.handoff_reason),
           reply_sent_at = case when p_delivery = 'left' then coalesce(b.reply_sent_at, now()) else b.reply_sent_at end,
           sending_since = case when p_delivery in ('left', 'unknown') then b.sending_since end,
           lease_token = null, lease_expires_at = null
      from told
     where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
    returning b.status, b.due_at;
$$;

revoke execute on function public.fail_buffer(bigint, uuid, text, integer, numeric, text, text, boolean, numeric, text, numeric)
    from public, anon, authenticated;
grant execute on function public.fail_buffer(bigint, uuid, text, integer, numeric, text, text, boolean, numeric, text, numeric)
    to service_role;

-- --- a reply delivered exactly once --------------------------------------------------------------

drop function public.fence_reply(bigint, uuid, numeric, jsonb);

-- As in 20261124000000, and:
--   * it counts the model call that wrote the draft (p_model_called: this attempt called the model,
--     rather than reusing a draft an earlier attempt kept) in model_calls, whatever the verdict;
--   * on `send` the decision is stored (the draft a retry reuses) and sending_since stamped, in the
--     same statement, before anything is posted;
--   * a new verdict, `sent`: the reply has left already (Chatwoot's echo said so, or a hand-off is
--     being retried), so nothing is posted again.
create function public.fence_reply(
    p_buffer_id bigint, p_lease_token uuid, p_lease_seconds numeric, p_defaults jsonb,
    p_model_called boolean default false, p_reply_draft text default null, p_handoff_reason text default null)
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
    calls integer := case when p_model_called then 1 else 0 end;
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
        -- Not ours any more, but the call was paid for: it still counts.
        update public.message_buffer x set model_calls = x.model_calls + calls where x.id = p_buffer_id and calls > 0;
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
               cancelled_at = now(), lease_token = null, lease_expires_at = null,
               model_calls = x.model_calls + calls
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
               model_calls = x.model_calls + calls, sending_since = null,
               reply_content = null, handoff_reason = null, lease_token = null, lease_expires_at = null
         where x.id = b.id;
        return query select 'merged';
        return;
    end if;

    update public.message_buffer x
       set lease_expires_at = now() + make_interval(secs => p_lease_seconds::double precision),
           model_calls = x.model_calls + calls,
           reply_content = coalesce(p_reply_draft, x.reply_content),
           handoff_reason = coalesce(p_handoff_reason, x.handoff_reason),
           sending_since = now()
     where x.id = b.id;
    -- `sent`: the reply left already (an echo came, or a hand-off is being retried): do the rest
    -- without posting it again. Read here, under the lock, not at the claim.
    return query select case when b.reply_sent_at is not null then 'sent' else 'send' end;
end;
$$;

drop function public.complete_buffer(bigint, uuid, text, text, text, numeric);

-- As in 20261124000000, and it keeps the reply's id on the channel.
create function public.complete_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_reply text, p_outcome text default 'replied',
    p_handoff_reason text default null, p_pause_seconds numeric default null,
    p_platform_message_id text default null)
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
           completed_at = now(), lease_token = null, lease_expires_at = null, last_error = null,
           platform_message_id = coalesce(p_platform_message_id, x.platform_message_id),
           reply_sent_at = case when p_reply is not null then coalesce(x.reply_sent_at, now()) end
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

drop function public.reclaim_expired_leases(integer);

-- As in 20261123000000, and every expired lease is logged in attempt_errors, and a burst whose reply
-- may have left (its post began, no echo yet) is due
-- again only p_send_grace_seconds after that post: Chatwoot's echo of the reply, if it came,
-- marks it sent meanwhile, and the retry completes it without posting. It is not failed for it.
create function public.reclaim_expired_leases(p_max_attempts integer, p_send_grace_seconds numeric default 0)
returns table (buffer_id bigint, status text)
language sql
set search_path = ''
as $$
    update public.message_buffer b
       set status = case when b.attempts >= p_max_attempts and (b.sending_since is null or b.reply_sent_at is not null)
                              or b.attempts >= 2 * p_max_attempts  -- every attempt dies while posting: stop
                         then 'failed' else 'processing' end,
           due_at = case when b.sending_since is not null and b.reply_sent_at is null
                         then greatest(now(), b.sending_since + make_interval(secs => p_send_grace_seconds::double precision))
                         else now() end,
           last_error = 'lease expired: the worker stopped before finishing (attempt ' || b.attempts || ')',
           attempt_errors = b.attempt_errors || jsonb_build_object(
                               'attempt', b.attempts, 'at', now(),
                               'error', 'lease expired: the worker stopped before finishing'),
           lease_token = null, lease_expires_at = null
     where b.status = 'processing' and b.lease_token is not null and b.lease_expires_at <= now()
    returning b.id, b.status;
$$;

-- Chatwoot's echo of a reply the bot posted (its content_attributes carry the burst's id): the reply
-- has left. A burst still being answered is marked sent, so whoever completes it never posts again;
-- a completed one gets the channel's id if it lacked it. Outcomes: recorded, known, unknown.
create function public.record_reply_echo(
    p_channel text, p_account_id text, p_buffer_id bigint, p_platform_message_id text)
returns table (outcome text)
language plpgsql
set search_path = ''
as $$
declare
    state text;
begin
    update public.message_buffer b
       set reply_sent_at = coalesce(b.reply_sent_at, now()),
           platform_message_id = coalesce(b.platform_message_id, p_platform_message_id)
     where b.id = p_buffer_id and b.channel = p_channel and b.account_id = p_account_id
       and b.status in ('processing', 'completed', 'failed')
    returning case when b.status = 'completed' then 'known' else 'recorded' end into state;
    return query select coalesce(state, 'unknown');
end;
$$;

-- --- the sweeper's sleep ---------------------------------------------------------------------------

-- As in 20261123000000, counting only what a claim could take: a conversation's newer burst waits
-- for its older one (replies keep their order), so its due time is not a reason to wake. Counting
-- it made a sweeper spin, claiming nothing, for as long as the older burst was being answered or
-- waited out a backoff, a Retry-After or a send grace.
create or replace function public.seconds_until_next_due()
returns table (seconds double precision)
language sql stable
set search_path = ''
as $$
    -- greatest() skips nulls, so "nothing waiting" (min is null) stays null.
    select greatest(extract(epoch from min(b.due_at) - now()), 0)::double precision
      from public.message_buffer b
     where b.status in ('active', 'processing') and (b.status = 'active' or b.lease_token is null)
       and not exists (
           select 1 from public.message_buffer older
            where older.channel = b.channel and older.account_id = b.account_id
              and older.conversation_id = b.conversation_id
              and older.status in ('active', 'processing') and older.id < b.id)
    having min(b.due_at) is not null;
$$;

do $$
declare
    fn text;
begin
    foreach fn in array array[
        'public.fence_reply(bigint, uuid, numeric, jsonb, boolean, text, text)',
        'public.complete_buffer(bigint, uuid, text, text, text, numeric, text)',
        'public.reclaim_expired_leases(integer, numeric)',
        'public.record_reply_echo(text, text, bigint, text)'
    ] loop
        execute format('revoke execute on function %s from public, anon, authenticated', fn);
        execute format('grant execute on function %s to service_role', fn);
    end loop;
end
$$;

