-- OPTIONAL, OFF BY DEFAULT: sweep from inside Supabase instead of EventBridge.
--
-- This migration only defines two functions; nothing is scheduled until an operator enables it,
-- in the SQL editor, with the deployed API's /sweep URL and its SWEEP_TOKEN:
--
--     create extension if not exists pg_cron;
--     create extension if not exists pg_net;
--     select public.enable_cron_sweep('https://<api>/sweep', '<SWEEP_TOKEN>');
--     select public.disable_cron_sweep();   -- to stop
--
-- Every 10 seconds pg_cron runs a job that POSTs to /sweep through pg_net with the bearer token,
-- which is kept in Supabase Vault, never in the job's text. /sweep starts a sweep pass off the
-- request (on Lambda, an asynchronous invocation of the sweeper). Only the database owner may
-- call these functions: EXECUTE is revoked from every API role, service_role included.

create function public.enable_cron_sweep(p_sweep_url text, p_sweep_token text)
returns text
language plpgsql
set search_path = ''
as $$
begin
    if not exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron')
       or not exists (select 1 from pg_catalog.pg_extension where extname = 'pg_net') then
        raise exception 'enable_cron_sweep needs the pg_cron and pg_net extensions'
            using hint = 'create extension pg_cron; create extension pg_net; (Database > Extensions in Studio)';
    end if;
    if p_sweep_url !~ '^https://' or coalesce(p_sweep_token, '') = '' then
        raise exception 'enable_cron_sweep needs an https:// URL and the SWEEP_TOKEN';
    end if;
    perform public.disable_cron_sweep();
    perform vault.create_secret(p_sweep_token, 'chatbuffer_sweep_token', 'Bearer token of chatbuffer POST /sweep');
    perform cron.schedule('chatbuffer-sweep', '10 seconds', format($job$
        select net.http_post(
            url := %L,
            headers := jsonb_build_object('Authorization', 'Bearer ' || (
                select decrypted_secret from vault.decrypted_secrets where name = 'chatbuffer_sweep_token')),
            timeout_milliseconds := 5000)
    $job$, p_sweep_url));
    return 'chatbuffer-sweep scheduled every 10 seconds';
end;
$$;

create function public.disable_cron_sweep()
returns text
language plpgsql
set search_path = ''
as $$
begin
    if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
        perform cron.unschedule(jobid) from cron.job where jobname = 'chatbuffer-sweep';
    end if;
    if exists (select 1 from pg_catalog.pg_namespace where nspname = 'vault') then
        delete from vault.secrets where name = 'chatbuffer_sweep_token';
    end if;
    return 'chatbuffer-sweep not scheduled';
end;
$$;

revoke execute on function public.enable_cron_sweep(text, text), public.disable_cron_sweep()
    from public, anon, authenticated, service_role;
