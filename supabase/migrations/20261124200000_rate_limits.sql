-- Rate limits: a 429 from the model provider or a channel puts the burst back until the time the
-- server asked for (Retry-After), without counting the attempt: being told to slow down is not a
-- failure, and must not exhaust MAX_ATTEMPTS during a provider's busy hour.
--
-- fail_buffer, as in 20261124100000, takes p_retry_after_seconds for that: when it is given, the
-- burst is due again after it, the attempt is given back (so it never ends `failed` for it), and
-- the entry in attempt_errors says `deferred`.

drop function public.fail_buffer(bigint, uuid, text, integer, numeric, text, text, boolean);

create function public.fail_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_error text, p_max_attempts integer,
    p_backoff_seconds numeric, p_reply_draft text default null, p_handoff_reason text default null,
    p_model_called boolean default false, p_retry_after_seconds numeric default null)
returns table (status text, due_at timestamptz)
language sql
set search_path = ''
as $$
    update public.message_buffer b
       set status = case when p_retry_after_seconds is null and b.attempts >= p_max_attempts then 'failed'
                         else 'processing' end,
           due_at = now() + make_interval(secs => least(
                       case when p_retry_after_seconds is not null then greatest(p_retry_after_seconds, 0)
                            else p_backoff_seconds * power(2, greatest(b.attempts - 1, 0)) end, 3600)::double precision),
           attempts = case when p_retry_after_seconds is null then b.attempts else greatest(b.attempts - 1, 0) end,
           last_error = left(p_error, 2000),
           attempt_errors = b.attempt_errors || jsonb_build_object(
                               'attempt', b.attempts, 'at', now(), 'error', left(p_error, 2000),
                               'deferred', p_retry_after_seconds is not null),
           model_calls = b.model_calls + case when p_model_called then 1 else 0 end,
           reply_content = coalesce(p_reply_draft, b.reply_content),
           handoff_reason = coalesce(p_handoff_reason, b.handoff_reason),
           lease_token = null, lease_expires_at = null
     where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
    returning b.status, b.due_at;
$$;

revoke execute on function public.fail_buffer(bigint, uuid, text, integer, numeric, text, text, boolean, numeric)
    from public, anon, authenticated;
grant execute on function public.fail_buffer(bigint, uuid, text, integer, numeric, text, text, boolean, numeric)
    to service_role;
