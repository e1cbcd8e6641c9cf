-- Nobody but the backend touches chatbuffer's data.
-- Supabase exposes the public schema through its API to whoever holds the anon (publishable) key,
-- so every table has row level security with no policy for anon or authenticated (they see no
-- rows), and only service_role (the backend's key; it bypasses RLS) gets table and function rights.
-- chatbuffer migrate creates the three roles on a bare PostgreSQL, so this file runs everywhere.

alter table public.message_buffer enable row level security;
alter table public.buffered_messages enable row level security;
alter table public.feature_flags enable row level security;
alter table public.buffer_settings enable row level security;

-- RLS with no permissive policy already shows these roles nothing; the explicit deny says so in
-- Studio and satisfies Supabase's linter (0008, RLS enabled but no policy).
create policy api_roles_denied on public.message_buffer as restrictive
    for all to anon, authenticated using (false) with check (false);
create policy api_roles_denied on public.buffered_messages as restrictive
    for all to anon, authenticated using (false) with check (false);
create policy api_roles_denied on public.feature_flags as restrictive
    for all to anon, authenticated using (false) with check (false);
create policy api_roles_denied on public.buffer_settings as restrictive
    for all to anon, authenticated using (false) with check (false);

revoke all on public.message_buffer, public.buffered_messages, public.feature_flags,
              public.buffer_settings
    from public, anon, authenticated;
grant select, insert, update, delete on public.message_buffer, public.buffered_messages,
                                        public.feature_flags, public.buffer_settings
    to service_role;

revoke execute on all functions in schema public from public, anon, authenticated;
grant execute on all functions in schema public to service_role;

-- Functions created later by the migrating role start closed too. (Only the global form can take
-- back PostgreSQL's built-in EXECUTE for PUBLIC; a per-schema default cannot.)
alter default privileges revoke execute on functions from public;
alter default privileges in schema public revoke execute on functions from anon, authenticated;
alter default privileges in schema public grant execute on functions to service_role;
