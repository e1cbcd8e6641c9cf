-- Channels beyond Chatwoot (issue 12): WhatsApp Cloud API, Messenger, Instagram, Twilio.
--
-- The buffer, the claim and the processing are the same for every channel: a conversation is
-- keyed by channel + business account + thread, as it always was. One thing is new:
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
