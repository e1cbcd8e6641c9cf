-- The operator's view: what the admin API, the inspector page, the playground and the CLI read,
-- and the actions an operator takes, each one function that records who did what.
--
--   admin_stats          bursts by state per channel, what is due, the oldest wait, failures,
--                        discarded drafts, model calls and reply lateness (one read, one jsonb)
--   admin_list_bursts    a page of bursts, newest first, filtered by state, channel, conversation
--   admin_burst          one burst: its messages, attempts and errors, reply, the conversation's
--                        state and earlier turns, and the operator actions taken on it
--   admin_conversation   a conversation's recent bursts with their messages and replies
--   admin_retry_burst / admin_answer_now / admin_cancel_waiting / admin_pause_bot / admin_resume_bot
--   (the pipeline's functions that fill model_calls and attempt_errors are redefined in
--   20261124200000_production_hardening.sql)
--                        the actions. They take the conversation's advisory lock (the one ingest
--                        and the fence take) before touching rows, and a sweeper's claim skips
--                        locked rows, so no action races a sweeper into a double answer.
--
-- Everything here reads message text only on request (a burst, a conversation); the stats and the
-- list carry a short preview for the page, never anything the logs would print.

-- --- what the stats need that the buffer did not record ------------------------------------------

alter table public.message_buffer
    add column model_calls     integer not null default 0,  -- replies the model wrote for this burst (drafts included)
    add column attempt_errors  jsonb not null default '[]'::jsonb;  -- every failed attempt: {attempt, at, error}

alter table public.message_buffer  -- filled by 20261124200000 (exactly-once delivery)
    add column sending_since        timestamptz,  -- the reply's post began; cleared when it failed for sure
    add column platform_message_id  text;         -- the channel's id of the reply (Chatwoot's message id)

comment on column public.message_buffer.sending_since is
    'When the post of the reply began. Set and no reply_sent_at: it may have left; a reclaim waits for the echo before posting again.';
comment on column public.message_buffer.platform_message_id is
    'The reply''s id on the channel (Chatwoot''s message id), from the post''s answer or its echo.';

comment on column public.message_buffer.model_calls is
    'Model calls that produced a decision for this burst, discarded drafts included (a retry that reuses a draft calls nothing).';
comment on column public.message_buffer.attempt_errors is
    'One entry per failed attempt, oldest first: {"attempt", "at", "error"}. last_error is the newest.';

create table public.admin_actions (
    id               bigint generated always as identity primary key,
    at               timestamptz not null default now(),
    actor            text not null,    -- who: the name the admin API or the CLI was given
    via              text not null,    -- api, cli or playground
    action           text not null check (action in ('retry', 'answer_now', 'cancel', 'pause', 'resume')),
    buffer_id        bigint,           -- no foreign key: the trail outlives retention's purge
    channel          text,
    account_id       text,
    conversation_id  text,
    outcome          text not null,    -- what the action did: retried, not_failed, answering, nothing_waiting, ...
    detail           text
);

comment on table public.admin_actions is
    'Audit trail: every operator action (admin API, CLI, playground), who took it, when, on what, and what it did.';

create index admin_actions_buffer_idx on public.admin_actions (buffer_id) where buffer_id is not null;
create index admin_actions_conversation_idx on public.admin_actions (channel, account_id, conversation_id, id);

-- Bursts that need an operator: failed, newest first (the inspector's and the CLI's list).
create index message_buffer_failed_idx on public.message_buffer (id) where status = 'failed';

-- --- reading -----------------------------------------------------------------------------------

-- A burst as the admin API shows it (no message text): its state, its timing, its cost.
-- `state` splits processing into `processing` (a worker holds it) and `retrying` (waiting for its
-- next attempt). max_age_at is when the burst is answered at the latest, however the customer types.
create function public.admin_burst_json(b public.message_buffer, p_max_age_seconds numeric)
returns jsonb
language sql stable
set search_path = ''
as $$
    select jsonb_build_object(
        'id', b.id, 'channel', b.channel, 'account_id', b.account_id, 'conversation_id', b.conversation_id,
        'status', b.status,
        'state', case when b.status = 'processing' and b.lease_token is null then 'retrying' else b.status end,
        'message_count', b.message_count, 'first_message_at', b.first_message_at,
        'last_message_at', b.last_message_at, 'due_at', b.due_at,
        'max_age_at', b.first_message_at + make_interval(secs => p_max_age_seconds::double precision),
        'lease_expires_at', b.lease_expires_at, 'attempts', b.attempts, 'last_error', b.last_error,
        'outcome', b.outcome, 'handoff_reason', b.handoff_reason, 'cancel_reason', b.cancel_reason,
        'discarded_drafts', b.discarded_drafts, 'model_calls', b.model_calls,
        'created_at', b.created_at, 'completed_at', b.completed_at, 'cancelled_at', b.cancelled_at,
        'reply_sent_at', b.reply_sent_at, 'sending_since', b.sending_since,
        'platform_message_id', b.platform_message_id);
$$;

-- The numbers at the top of the inspector and of `chatbuffer status`, per channel and in total.
-- Unfinished and failed bursts are counted over all rows (the partial indexes keep that small),
-- failed_24h by when they started; answered and cancelled work, model calls, discarded drafts and
-- messages over the bursts started in the last p_window_seconds (default one hour: the inspector
-- polls this, and a day of a busy deployment is a million rows, 1.5 s to read; bench/claim.py);
-- lateness over the replies of the last hour: completed_at - due_at, the time from the end of the
-- quiet window (or the last retry's due time) to the reply having left.
create function public.admin_stats(p_defaults jsonb, p_window_seconds numeric default 3600)
returns table (stats jsonb)
language sql stable
set search_path = ''
as $$
    -- Three disjoint parts, each read through its own partial index, so the cost follows the
    -- window's traffic and what is unfinished or failed, never the whole retained history.
    with recent as (
        select b.* from public.message_buffer b
         where b.status in ('completed', 'cancelled')
           and b.created_at > now() - make_interval(secs => p_window_seconds::double precision)
        union all
        select b.* from public.message_buffer b where b.status = 'failed'
        union all
        select b.* from public.message_buffer b where b.status in ('active', 'processing')
    ),
    per_channel as (
        select r.channel,
               count(*) filter (where r.status = 'active') as waiting,
               count(*) filter (where r.status = 'active' and r.due_at <= now()) as due_now,
               count(*) filter (where r.status = 'processing' and r.lease_token is not null) as processing,
               count(*) filter (where r.status = 'processing' and r.lease_token is null) as retrying,
               count(*) filter (where r.status = 'failed') as failed,
               count(*) filter (where r.status = 'failed'
                                  and r.created_at > now() - interval '24 hours') as failed_24h,
               count(*) filter (where r.status = 'completed'
                                  and r.created_at > now() - make_interval(secs => p_window_seconds::double precision))
                   as completed,
               count(*) filter (where r.status = 'cancelled'
                                  and r.created_at > now() - make_interval(secs => p_window_seconds::double precision))
                   as cancelled,
               coalesce(sum(r.discarded_drafts) filter (
                   where r.created_at > now() - make_interval(secs => p_window_seconds::double precision)), 0)
                   as discarded_drafts,
               coalesce(sum(r.model_calls) filter (
                   where r.created_at > now() - make_interval(secs => p_window_seconds::double precision)), 0)
                   as model_calls,
               coalesce(sum(r.message_count) filter (
                   where r.created_at > now() - make_interval(secs => p_window_seconds::double precision)), 0)
                   as messages,
               extract(epoch from now() - min(r.first_message_at) filter (where r.status = 'active'))
                   as oldest_waiting_seconds,
               percentile_cont(0.5) within group (order by extract(epoch from r.completed_at - r.due_at))
                   filter (where r.outcome = 'replied' and r.completed_at > now() - interval '1 hour')
                   as lateness_p50_seconds,
               percentile_cont(0.95) within group (order by extract(epoch from r.completed_at - r.due_at))
                   filter (where r.outcome = 'replied' and r.completed_at > now() - interval '1 hour')
                   as lateness_p95_seconds,
               count(*) filter (where r.outcome = 'replied' and r.completed_at > now() - interval '1 hour')
                   as replies_last_hour
          from recent r
         group by grouping sets ((r.channel), ())
    )
    select jsonb_build_object(
        'now', now(),
        'window_seconds', p_window_seconds,
        'totals', (select to_jsonb(p) - 'channel' from per_channel p where p.channel is null),
        'channels', coalesce((select jsonb_agg(to_jsonb(p) order by p.channel) from per_channel p
                               where p.channel is not null), '[]'::jsonb),
        'paused_conversations', (select count(*) from public.conversation_state s where s.bot_paused_until > now()),
        'dead_letters_24h', (select count(*) from public.webhook_dead_letters d
                              where d.received_at > now() - interval '24 hours'),
        'settings', (select jsonb_build_object('window_seconds', s.window_seconds, 'max_age_seconds', s.max_age_seconds,
                                               'max_messages', s.max_messages, 'error', s.error)
                       from public.effective_settings(p_defaults) s));
$$;

-- A page of bursts, newest first. p_state: active, processing, retrying, completed, failed,
-- cancelled, or null for all; p_before_id: the last id of the previous page (keyset pagination).
-- preview: the start of the burst's last message, for the list.
create function public.admin_list_bursts(
    p_defaults jsonb, p_state text default null, p_channel text default null, p_account_id text default null,
    p_conversation_id text default null, p_limit integer default 50, p_before_id bigint default null)
returns table (burst jsonb)
language plpgsql stable
set search_path = ''
as $$
declare
    max_age numeric;
begin
    if p_state is not null and p_state not in ('active', 'processing', 'retrying', 'completed', 'failed', 'cancelled') then
        raise exception 'unknown state %: use active, processing, retrying, completed, failed or cancelled', p_state
            using errcode = 'invalid_parameter_value';
    end if;
    if p_limit is null or p_limit < 1 or p_limit > 1000 then
        raise exception 'limit must be between 1 and 1000' using errcode = 'invalid_parameter_value';
    end if;
    select s.max_age_seconds into max_age from public.effective_settings(p_defaults) s;
    return query
    select public.admin_burst_json(b, max_age) || jsonb_build_object('preview', (
               select left(coalesce(m.content, '[attachment]'), 80) from public.buffered_messages m
                where m.buffer_id = b.id order by m.sent_at desc, m.received_at desc limit 1))
      from public.message_buffer b
     where (p_state is null
            or (p_state = 'retrying' and b.status = 'processing' and b.lease_token is null)
            or (p_state = 'processing' and b.status = 'processing' and b.lease_token is not null)
            or (p_state not in ('retrying', 'processing') and b.status = p_state))
       and (p_channel is null or b.channel = p_channel)
       and (p_account_id is null or b.account_id = p_account_id)
       and (p_conversation_id is null or b.conversation_id = p_conversation_id)
       and (p_before_id is null or b.id < p_before_id)
     order by b.id desc
     limit p_limit;
end;
$$;

-- The messages of one burst, in order, as the admin API shows them.
create function public.admin_messages_json(p_buffer_id bigint)
returns jsonb
language sql stable
set search_path = ''
as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'external_id', m.external_id, 'author', m.author, 'content', m.content,
               'attachments', m.attachments, 'sent_at', m.sent_at, 'received_at', m.received_at)
           order by m.sent_at, m.received_at), '[]'::jsonb)
      from public.buffered_messages m where m.buffer_id = p_buffer_id;
$$;

-- The conversation's pause, as the admin API shows it.
create function public.admin_conversation_state_json(p_channel text, p_account_id text, p_conversation_id text)
returns jsonb
language sql stable
set search_path = ''
as $$
    select jsonb_build_object(
        'channel', p_channel, 'account_id', p_account_id, 'conversation_id', p_conversation_id,
        'paused', coalesce(s.bot_paused_until > now(), false),
        'bot_paused_until', case when s.bot_paused_until > now() then s.bot_paused_until end,
        'pause_reason', case when s.bot_paused_until > now() then s.pause_reason end)
      from (select 1) one
      left join public.conversation_state s
        on s.channel = p_channel and s.account_id = p_account_id and s.conversation_id = p_conversation_id;
$$;

-- One burst, whole: its row, its messages, every attempt's error, the conversation's state and
-- its last p_history bursts before this one (messages and replies), and the actions taken on it.
-- Null when there is no such burst.
create function public.admin_burst(p_buffer_id bigint, p_defaults jsonb, p_history integer default 5)
returns table (burst jsonb)
language sql stable
set search_path = ''
as $$
    select public.admin_burst_json(b, s.max_age_seconds) || jsonb_build_object(
               'reply', b.reply_content,
               'messages', public.admin_messages_json(b.id),
               'attempt_errors', b.attempt_errors,
               'conversation', public.admin_conversation_state_json(b.channel, b.account_id, b.conversation_id),
               'history', coalesce((
                   select jsonb_agg(h.item order by h.id)
                     from (select e.id, public.admin_burst_json(e, s.max_age_seconds)
                                        || jsonb_build_object('reply', e.reply_content,
                                                              'messages', public.admin_messages_json(e.id)) as item
                             from public.message_buffer e
                            where e.channel = b.channel and e.account_id = b.account_id
                              and e.conversation_id = b.conversation_id and e.id < b.id
                            order by e.id desc limit greatest(p_history, 0)) h), '[]'::jsonb),
               'actions', coalesce((
                   select jsonb_agg(to_jsonb(a) order by a.id) from public.admin_actions a
                    where a.buffer_id = b.id
                       or (a.buffer_id is null and a.channel = b.channel and a.account_id = b.account_id
                           and a.conversation_id = b.conversation_id and a.at >= b.created_at)), '[]'::jsonb))
      from public.message_buffer b, public.effective_settings(p_defaults) s
     where b.id = p_buffer_id;
$$;

-- A conversation's last p_limit bursts, oldest first, with their messages and replies, and its
-- state: what the playground shows (and the inspector, for a conversation).
create function public.admin_conversation(
    p_channel text, p_account_id text, p_conversation_id text, p_defaults jsonb, p_limit integer default 20)
returns table (conversation jsonb)
language sql stable
set search_path = ''
as $$
    select public.admin_conversation_state_json(p_channel, p_account_id, p_conversation_id)
           || jsonb_build_object('now', now(), 'bursts', coalesce((
                  select jsonb_agg(x.item order by x.id)
                    from (select b.id, public.admin_burst_json(b, s.max_age_seconds)
                                       || jsonb_build_object('reply', case when b.status = 'completed' then b.reply_content end,
                                                             'messages', public.admin_messages_json(b.id)) as item
                            from public.message_buffer b
                           where b.channel = p_channel and b.account_id = p_account_id
                             and b.conversation_id = p_conversation_id
                           order by b.id desc limit greatest(p_limit, 0)) x), '[]'::jsonb))
      from public.effective_settings(p_defaults) s;
$$;

-- --- actions ----------------------------------------------------------------------------------

create function public.record_admin_action(
    p_actor text, p_via text, p_action text, p_buffer_id bigint, p_channel text, p_account_id text,
    p_conversation_id text, p_outcome text, p_detail text)
returns void
language sql
set search_path = ''
as $$
    insert into public.admin_actions (actor, via, action, buffer_id, channel, account_id, conversation_id,
                                      outcome, detail)
    values (coalesce(nullif(btrim(p_actor), ''), 'unknown'), coalesce(p_via, 'api'), p_action, p_buffer_id,
            p_channel, p_account_id, p_conversation_id, p_outcome, p_detail);
$$;

-- Retry a failed burst: it waits for a sweeper again, due now, with a fresh attempt budget (its
-- errors so far stay in attempt_errors). A decision already taken is kept, so a burst that failed
-- to send is sent without another model call; if the customer wrote meanwhile, the fence merges
-- the new messages first, as for any draft. Outcomes:
--   retried     done;
--   superseded  a newer burst of the conversation was answered, or is being answered: its reply
--               already had these messages in its history, and a late second answer would be
--               stale (and would run beside the newer one);
--   bot_paused  the bot is paused here: the fence would only cancel it (resume first);
--   not_failed  it is not failed (already retried, or never failed); unknown: no such burst.
create function public.admin_retry_burst(p_buffer_id bigint, p_actor text, p_via text default 'api')
returns table (outcome text, buffer_id bigint, status text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    b public.message_buffer;
    result text;
begin
    select * into b from public.message_buffer x where x.id = p_buffer_id;
    if not found then
        return query select 'unknown', p_buffer_id, null::text;
        return;
    end if;
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(b.channel || '/' || b.account_id || '/' || b.conversation_id, 0));
    select * into b from public.message_buffer x where x.id = p_buffer_id for update;
    result := case
        when b.status <> 'failed' then 'not_failed'
        when exists (select 1 from public.message_buffer n
                      where n.channel = b.channel and n.account_id = b.account_id
                        and n.conversation_id = b.conversation_id and n.id > b.id
                        and (n.status = 'completed' or (n.status = 'processing' and n.lease_token is not null)))
            then 'superseded'
        when exists (select 1 from public.conversation_state s
                      where s.channel = b.channel and s.account_id = b.account_id
                        and s.conversation_id = b.conversation_id and s.bot_paused_until > now())
            then 'bot_paused'
        else 'retried'
    end;
    if result = 'retried' then
        update public.message_buffer x
           set status = 'processing', due_at = now(), attempts = 0, lease_token = null, lease_expires_at = null
         where x.id = p_buffer_id
        returning * into b;
    end if;
    perform public.record_admin_action(p_actor, p_via, 'retry', b.id, b.channel, b.account_id, b.conversation_id,
                                       result, b.last_error);
    return query select result, b.id, b.status;
end;
$$;

-- Answer a conversation's waiting bursts now (the CLI's `flush`): the open one and one waiting to
-- retry become due now, and the next sweep pass claims them, oldest first. Outcomes: answering
-- (with the oldest such burst), nothing_waiting.
create function public.admin_answer_now(
    p_channel text, p_account_id text, p_conversation_id text, p_actor text, p_via text default 'api')
returns table (outcome text, buffer_id bigint)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    buf_id bigint;
    result text;
begin
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));
    with due as (
        update public.message_buffer b
           set due_at = least(b.due_at, now())
         where b.channel = p_channel and b.account_id = p_account_id and b.conversation_id = p_conversation_id
           and (b.status = 'active' or (b.status = 'processing' and b.lease_token is null))
           -- not one whose reply may have left: it waits for Chatwoot's echo (20261124200000)
           and not (b.sending_since is not null and b.reply_sent_at is null)
        returning b.id
    )
    select min(due.id) into buf_id from due;
    result := case when buf_id is null then 'nothing_waiting' else 'answering' end;
    perform public.record_admin_action(p_actor, p_via, 'answer_now', buf_id, p_channel, p_account_id,
                                       p_conversation_id, result, null);
    return query select result, buf_id;
end;
$$;

-- Cancel what waits in a conversation (open, or waiting to retry), so it is never answered; the
-- bot still answers the customer's next message. A burst a worker is answering right now is not
-- touched (pause the bot to stop it: the fence then cancels it). Outcomes: cancelled, nothing_waiting.
create function public.admin_cancel_waiting(
    p_channel text, p_account_id text, p_conversation_id text, p_actor text, p_via text default 'api')
returns table (outcome text, cancelled integer)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    n integer;
begin
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));
    n := public.cancel_waiting_bursts(p_channel, p_account_id, p_conversation_id,
                                      'cancelled by ' || coalesce(p_actor, 'unknown'));
    perform public.record_admin_action(p_actor, p_via, 'cancel', null, p_channel, p_account_id, p_conversation_id,
                                       case when n > 0 then 'cancelled' else 'nothing_waiting' end, n || ' burst(s)');
    return query select case when n > 0 then 'cancelled' else 'nothing_waiting' end, n;
end;
$$;

-- Pause the bot in a conversation for p_seconds (null: until resumed), as a takeover does: what
-- waits is cancelled, later messages are kept as history, and a reply being written is stopped at
-- the fence. Its time counts as a signal's, so an older platform signal delivered late cannot undo it.
create function public.admin_pause_bot(
    p_channel text, p_account_id text, p_conversation_id text, p_seconds numeric, p_actor text,
    p_via text default 'api')
returns table (outcome text, bot_paused_until timestamptz, cancelled integer)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    until_at timestamptz;
    reason text := 'paused by ' || coalesce(p_actor, 'unknown');
    n integer;
begin
    if p_seconds is not null and p_seconds <= 0 then
        raise exception 'pause seconds must be positive (or null: until resumed)' using errcode = 'invalid_parameter_value';
    end if;
    until_at := case when p_seconds is null then 'infinity'::timestamptz
                     else now() + make_interval(secs => p_seconds::double precision) end;
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));
    insert into public.conversation_state as s (channel, account_id, conversation_id, bot_paused_until,
                                                pause_reason, signal_at)
    values (p_channel, p_account_id, p_conversation_id, until_at, reason, now())
    on conflict (channel, account_id, conversation_id) do update
       set bot_paused_until = excluded.bot_paused_until, pause_reason = excluded.pause_reason,
           signal_at = greatest(s.signal_at, excluded.signal_at), updated_at = now();
    n := public.cancel_waiting_bursts(p_channel, p_account_id, p_conversation_id, reason);
    perform public.record_admin_action(p_actor, p_via, 'pause', null, p_channel, p_account_id, p_conversation_id,
                                       'paused', 'until ' || until_at || ', ' || n || ' waiting burst(s) cancelled');
    return query select 'paused', until_at, n;
end;
$$;

-- Let the bot answer in a conversation again. Outcomes: resumed, not_paused.
create function public.admin_resume_bot(
    p_channel text, p_account_id text, p_conversation_id text, p_actor text, p_via text default 'api')
returns table (outcome text)
language plpgsql
set search_path = ''
as $$
#variable_conflict use_column
declare
    result text;
begin
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended(p_channel || '/' || p_account_id || '/' || p_conversation_id, 0));
    update public.conversation_state s
       set bot_paused_until = null, pause_reason = null, signal_at = greatest(s.signal_at, now()), updated_at = now()
     where s.channel = p_channel and s.account_id = p_account_id and s.conversation_id = p_conversation_id
       and s.bot_paused_until > now();
    result := case when found then 'resumed' else 'not_paused' end;
    perform public.record_admin_action(p_actor, p_via, 'resume', null, p_channel, p_account_id, p_conversation_id,
                                       result, null);
    return query select result;
end;
$$;

-- --- lock-down (as 20261123000100) ----------------------------------------------------------------

alter table public.admin_actions enable row level security;
create policy api_roles_denied on public.admin_actions as restrictive
    for all to anon, authenticated using (false) with check (false);
revoke all on public.admin_actions from public, anon, authenticated;
grant select, insert on public.admin_actions to service_role;  -- an audit trail: nobody edits it

do $$
declare
    fn text;
begin
    foreach fn in array array[
        'public.admin_burst_json(public.message_buffer, numeric)',
        'public.admin_stats(jsonb, numeric)',
        'public.admin_list_bursts(jsonb, text, text, text, text, integer, bigint)',
        'public.admin_messages_json(bigint)',
        'public.admin_conversation_state_json(text, text, text)',
        'public.admin_burst(bigint, jsonb, integer)',
        'public.admin_conversation(text, text, text, jsonb, integer)',
        'public.record_admin_action(text, text, text, bigint, text, text, text, text, text)',
        'public.admin_retry_burst(bigint, text, text)',
        'public.admin_answer_now(text, text, text, text, text)',
        'public.admin_cancel_waiting(text, text, text, text, text)',
        'public.admin_pause_bot(text, text, text, numeric, text, text)',
        'public.admin_resume_bot(text, text, text, text, text)'
    ] loop
        execute format('revoke execute on function %s from public, anon, authenticated', fn);
        execute format('grant execute on function %s to service_role', fn);
    end loop;
end
$$;
