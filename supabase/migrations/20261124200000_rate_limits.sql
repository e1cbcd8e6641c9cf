-- Rate limits: a 429 from the model provider or a channel puts the burst back until the time the
-- server asked for (Retry-After), without counting the attempt: being told to slow down is not a
-- failure, and must not exhaust MAX_ATTEMPTS during a provider's busy hour. As fail_buffer, a
-- decision already taken is kept, and a model call not yet counted by the fence is counted.
create function public.defer_buffer(
    p_buffer_id bigint, p_lease_token uuid, p_seconds numeric, p_reason text,
    p_reply_draft text default null, p_handoff_reason text default null, p_model_called boolean default false)
returns table (status text, due_at timestamptz)
language sql
set search_path = ''
as $$
    update public.message_buffer b
       set due_at = now() + make_interval(secs => least(greatest(p_seconds, 0), 3600)::double precision),
           attempts = greatest(b.attempts - 1, 0),
           last_error = left(p_reason, 2000),
           attempt_errors = b.attempt_errors || jsonb_build_object(
                               'attempt', b.attempts, 'at', now(), 'error', left(p_reason, 2000), 'deferred', true),
           model_calls = b.model_calls + case when p_model_called then 1 else 0 end,
           reply_content = coalesce(p_reply_draft, b.reply_content),
           handoff_reason = coalesce(p_handoff_reason, b.handoff_reason),
           lease_token = null, lease_expires_at = null
     where b.id = p_buffer_id and b.lease_token = p_lease_token and b.status = 'processing'
    returning b.status, b.due_at;
$$;

revoke execute on function public.defer_buffer(bigint, uuid, numeric, text, text, text, boolean)
    from public, anon, authenticated;
grant execute on function public.defer_buffer(bigint, uuid, numeric, text, text, text, boolean) to service_role;
