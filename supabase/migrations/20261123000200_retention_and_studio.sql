-- Retention, and comments so every table explains itself in Supabase Studio.
--
-- Finished bursts (completed or failed), their messages and the replies kept as history do not
-- grow forever: purge_finished_buffers() deletes what is older than the retention, in small
-- batches (each its own short transaction, rows locked with SKIP LOCKED so nothing waits on it).
-- The sweeper calls it between passes. Unfinished bursts are never purged, whatever their age.

create index message_buffer_finished_idx on public.message_buffer (created_at)
    where status in ('completed', 'failed');

create function public.purge_finished_buffers(p_older_than_seconds numeric, p_batch_size integer)
returns table (purged integer)
language plpgsql
set search_path = ''
as $$
declare
    removed integer;
begin
    with doomed as (
        select b.id from public.message_buffer b
         where b.status in ('completed', 'failed')
           and b.created_at < now() - make_interval(secs => p_older_than_seconds::double precision)
         order by b.created_at
         limit p_batch_size
           for update skip locked
    ),
    gone_messages as (
        delete from public.buffered_messages m using doomed where m.buffer_id = doomed.id
    )
    delete from public.message_buffer b using doomed where b.id = doomed.id;
    get diagnostics removed = row_count;
    return query select removed;
end;
$$;

revoke execute on function public.purge_finished_buffers(numeric, integer) from public, anon, authenticated;
grant execute on function public.purge_finished_buffers(numeric, integer) to service_role;

comment on column public.message_buffer.status is
    'active: collecting messages; processing: being answered (or waiting to retry); completed: answered; failed: gave up, see last_error.';
comment on column public.message_buffer.due_at is
    'active: when the quiet window ends; processing without a lease: when the next attempt may start.';
comment on column public.message_buffer.attempts is 'Processing attempts so far (a retry or an expired lease counts).';
comment on column public.message_buffer.lease_token is 'Set while a worker holds the burst; cleared on completion or failure.';
comment on column public.message_buffer.reply_content is
    'The reply sent (completed), or the one generated and not yet sent (a retry sends it as is).';
comment on column public.message_buffer.last_error is 'Why the last attempt failed: read this for failed bursts.';
comment on column public.buffered_messages.external_id is
    'The platform''s message id; with channel and account_id it makes a redelivered webhook a no-op.';
comment on column public.buffered_messages.sent_at is 'The platform''s timestamp; a burst is answered in this order.';
comment on column public.feature_flags.flag_name is
    'message_buffering, buffer_sweeper or typing_indicators (see description).';
comment on column public.feature_flags.description is 'What on and off mean.';
comment on column public.buffer_settings.setting_name is 'The environment variable it overrides, in lower case.';
comment on column public.buffer_settings.description is 'What the value means, and its environment variable.';
comment on function public.purge_finished_buffers(numeric, integer) is
    'Deletes up to p_batch_size finished bursts (and their messages) created more than p_older_than_seconds ago.';
