-- API: tokens, browser sessions, sign-in throttling, audit log, the API role and row-level
-- security. See docs/api.md ("Isolation").
--
-- The API connects as the role upstairs_api: not superuser, no BYPASSRLS, owns nothing. Every
-- request runs in one transaction that first sets, transaction-locally,
--   app.role       'operator' or 'tenant'
--   app.tenant_id  '<building id>/<tenant id>' for a tenant (ids never contain '/', and tenant
--                  ids are unique per building only, so the pair is the unambiguous key)
-- With neither set, every policy below answers "no rows". Roles are cluster-wide, grants and
-- policies are per schema: this file runs once per schema and creates the role if missing.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'upstairs_api') THEN
        BEGIN
            CREATE ROLE upstairs_api LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
                NOINHERIT NOREPLICATION;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created by a concurrent migration in another schema or database
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'upstairs_api'
                AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role upstairs_api must not be superuser or bypass row-level security';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO upstairs_api', current_schema());
END;
$$;

-- Who is asking, as set by the API for the current transaction (NULL/false when unset).
CREATE FUNCTION api_is_operator() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('app.role', true), '') = 'operator'
$$;
CREATE FUNCTION api_tenant_building() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT nullif(split_part(coalesce(current_setting('app.tenant_id', true), ''), '/', 1), '')
$$;
CREATE FUNCTION api_tenant() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT nullif(split_part(coalesce(current_setting('app.tenant_id', true), ''), '/', 2), '')
$$;

-- Tokens: only the SHA-256 of a token is stored. Operators see every building; a tenant
-- token belongs to one tenant of one building.
CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('operator', 'tenant')),
    building_id   text,
    tenant_id     text,
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CHECK ((role = 'operator' AND building_id IS NULL AND tenant_id IS NULL)
        OR (role = 'tenant' AND building_id IS NOT NULL AND tenant_id IS NOT NULL)),
    FOREIGN KEY (building_id, tenant_id) REFERENCES tenants(building_id, id) ON DELETE CASCADE
);

-- Browser sessions opened by signing in with a token (the cookie holds the session secret).
CREATE TABLE api_sessions (
    id_hash     bytea PRIMARY KEY,
    token_id    bigint NOT NULL REFERENCES api_tokens(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz
);

CREATE TABLE api_sign_in_failures (
    address  text NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_sign_in_failures_address ON api_sign_in_failures (address, at);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    token_id     bigint,
    role         text,
    building_id  text,
    tenant_id    text,
    action       text NOT NULL,
    target       text,
    result       text NOT NULL,
    detail       text,
    address      text
);
CREATE INDEX audit_log_at ON audit_log (at);

-- Authentication, run by the API role without any read access to the token tables.
CREATE FUNCTION api_authenticate(hash bytea)
RETURNS TABLE (token_id bigint, role text, building_id text, tenant_id text, name text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    tok api_tokens%ROWTYPE;
BEGIN
    SELECT * INTO tok FROM api_tokens t WHERE t.token_hash = hash AND t.revoked_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF tok.last_used_at IS NULL OR tok.last_used_at < now() - interval '1 minute' THEN
        UPDATE api_tokens t SET last_used_at = now() WHERE t.id = tok.id;
    END IF;
    RETURN QUERY SELECT tok.id, tok.role, tok.building_id, tok.tenant_id, tok.name;
END;
$$;

CREATE FUNCTION api_session_authenticate(hash bytea)
RETURNS TABLE (token_id bigint, role text, building_id text, tenant_id text, name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT t.id, t.role, t.building_id, t.tenant_id, t.name
      FROM api_sessions s JOIN api_tokens t ON t.id = s.token_id
     WHERE s.id_hash = hash AND s.ended_at IS NULL AND s.expires_at > now()
       AND t.revoked_at IS NULL
$$;

CREATE FUNCTION api_session_open(hash bytea, token bigint, lifetime interval)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DELETE FROM api_sessions WHERE expires_at < now() - interval '1 day';
    INSERT INTO api_sessions (id_hash, token_id, expires_at) VALUES (hash, token, now() + lifetime);
$$;

CREATE FUNCTION api_session_close(hash bytea)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    UPDATE api_sessions SET ended_at = now() WHERE id_hash = hash AND ended_at IS NULL;
$$;

-- Failed sign-ins from ``addr`` in the last minute (after recording one more when ``failed``).
CREATE FUNCTION api_sign_in_failures_recent(addr text, failed boolean)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    n integer;
BEGIN
    IF failed THEN
        DELETE FROM api_sign_in_failures WHERE address = addr AND at < now() - interval '1 hour';
        INSERT INTO api_sign_in_failures (address) VALUES (addr);
    END IF;
    SELECT count(*) INTO n FROM api_sign_in_failures
     WHERE address = addr AND at > now() - interval '1 minute';
    RETURN n;
END;
$$;

REVOKE ALL ON FUNCTION api_authenticate(bytea), api_session_authenticate(bytea),
    api_session_open(bytea, bigint, interval), api_session_close(bytea),
    api_sign_in_failures_recent(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_authenticate(bytea), api_session_authenticate(bytea),
    api_session_open(bytea, bigint, interval), api_session_close(bytea),
    api_sign_in_failures_recent(text, boolean) TO upstairs_api;

-- Which sensors the current tenant may read, and when: its own meters always; the sensors of
-- a zone (and zone meters without a tenant) while it leases the zone (lease dates are local
-- days of the building). Empty for operators and when no tenant is set. The view runs with
-- its owner's rights, so it sees the leases it needs, and filters on the current tenant.
CREATE VIEW api_sensor_tenancy AS
SELECT s.id AS sensor_id, '-infinity'::timestamptz AS from_ts, 'infinity'::timestamptz AS to_ts
  FROM sensors s
 WHERE s.building_id = api_tenant_building() AND s.tenant_id = api_tenant()
UNION ALL
SELECT s.id, l.valid_from::timestamp AT TIME ZONE b.timezone,
       coalesce(l.valid_to::timestamp AT TIME ZONE b.timezone, 'infinity')
  FROM sensors s
  JOIN leases l ON l.building_id = s.building_id AND l.zone_id = s.zone_id
  JOIN buildings b ON b.id = s.building_id
 WHERE s.tenant_id IS NULL AND s.building_id = api_tenant_building()
   AND l.tenant_id = api_tenant();

-- The current tenant's own meters (visible at all times): the fast path of the policies.
CREATE FUNCTION api_tenant_meters() RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(sensor_id), '{}') FROM api_sensor_tenancy
     WHERE from_ts = '-infinity'
$$;

-- Row-level security. Policies for upstairs_api are the isolation rules; the migrating role
-- (the owner, which the other services use) keeps full access under FORCE.
DO $$
DECLARE
    tbl text;
    building_scoped text[] := ARRAY['buildings', 'floors', 'zones', 'tariffs', 'tariff_periods',
                                    'tariff_windows'];
    sensor_scoped text[] := ARRAY['readings', 'rollups_1m', 'rollups_1h', 'sensor_latest'];
    all_tables text[] := building_scoped || sensor_scoped || ARRAY['tenants', 'leases',
        'sensors', 'alerts', 'alert_events', 'alert_commands', 'api_tokens', 'api_sessions',
        'api_sign_in_failures', 'audit_log'];
    time_col text;
BEGIN
    FOREACH tbl IN ARRAY all_tables LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tbl);
        EXECUTE format('CREATE POLICY owner_all ON %I TO CURRENT_USER USING (true)'
                       ' WITH CHECK (true)', tbl);
    END LOOP;
    FOREACH tbl IN ARRAY building_scoped LOOP
        EXECUTE format('CREATE POLICY api_read ON %I FOR SELECT TO upstairs_api USING ('
                       'api_is_operator() OR %I = api_tenant_building())',
                       tbl, CASE WHEN tbl = 'buildings' THEN 'id' ELSE 'building_id' END);
        EXECUTE format('GRANT SELECT ON %I TO upstairs_api', tbl);
    END LOOP;
    FOREACH tbl IN ARRAY sensor_scoped LOOP
        time_col := CASE tbl WHEN 'readings' THEN 'ts' WHEN 'sensor_latest' THEN 'ts'
                    ELSE 'bucket' END;
        EXECUTE format(
            'CREATE POLICY api_read ON %1$I FOR SELECT TO upstairs_api USING ('
            ' api_is_operator()'
            ' OR sensor_id = ANY ((SELECT api_tenant_meters())::text[])'
            ' OR EXISTS (SELECT 1 FROM api_sensor_tenancy st WHERE st.sensor_id = %1$I.sensor_id'
            '            AND %1$I.%2$I >= st.from_ts AND %1$I.%2$I < st.to_ts))',
            tbl, time_col);
        EXECUTE format('GRANT SELECT ON %I TO upstairs_api', tbl);
    END LOOP;
END;
$$;

CREATE POLICY api_read ON tenants FOR SELECT TO upstairs_api USING (
    api_is_operator() OR (building_id = api_tenant_building() AND id = api_tenant()));
CREATE POLICY api_read ON leases FOR SELECT TO upstairs_api USING (
    api_is_operator() OR (building_id = api_tenant_building() AND tenant_id = api_tenant()));
CREATE POLICY api_read ON sensors FOR SELECT TO upstairs_api USING (
    api_is_operator()
    OR (building_id = api_tenant_building()
        AND (tenant_id = api_tenant()
             OR (tenant_id IS NULL AND zone_id IN (
                 SELECT l.zone_id FROM leases l
                  WHERE l.building_id = api_tenant_building() AND l.tenant_id = api_tenant())))));
CREATE POLICY api_read ON alerts FOR SELECT TO upstairs_api USING (
    api_is_operator()
    OR (building_id = api_tenant_building() AND api_tenant() = ANY (tenant_ids)));
CREATE POLICY api_read ON alert_events FOR SELECT TO upstairs_api USING (
    api_is_operator() OR EXISTS (SELECT 1 FROM alerts a WHERE a.id = alert_id));
-- Operators may ask for any action; a tenant only to acknowledge an alert it can see.
CREATE POLICY api_read ON alert_commands FOR SELECT TO upstairs_api USING (
    api_is_operator() OR EXISTS (SELECT 1 FROM alerts a WHERE a.id = alert_id));
CREATE POLICY api_insert ON alert_commands FOR INSERT TO upstairs_api WITH CHECK (
    api_is_operator()
    OR (action = 'ack' AND EXISTS (SELECT 1 FROM alerts a WHERE a.id = alert_id)));
CREATE POLICY api_insert ON audit_log FOR INSERT TO upstairs_api WITH CHECK (
    api_is_operator() OR tenant_id IS NULL
    OR (building_id = api_tenant_building() AND tenant_id = api_tenant()));

GRANT SELECT ON tenants, leases, sensors, alerts, alert_events, alert_commands,
    api_sensor_tenancy TO upstairs_api;
GRANT INSERT ON alert_commands, audit_log TO upstairs_api;
GRANT USAGE ON SEQUENCE alert_commands_id_seq, audit_log_id_seq TO upstairs_api;

-- The move-in check needs a floor's total power now, also for a tenant that may not read its
-- neighbours' meters: this returns the total only (fresh readings: within 3 intervals).
CREATE FUNCTION api_floor_power_now(building text, floor_number integer)
RETURNS TABLE (power_kw double precision, meters integer, fresh integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT sum(l.value) FILTER (WHERE l.ts > now() - make_interval(secs => 3 * s.interval_s)),
           count(*)::integer,
           (count(*) FILTER (WHERE l.ts > now() - make_interval(secs => 3 * s.interval_s)))::integer
      FROM sensors s LEFT JOIN sensor_latest l ON l.sensor_id = s.id
     WHERE s.building_id = building AND s.floor = floor_number AND s.kind = 'power' AND s.active
$$;
REVOKE ALL ON FUNCTION api_floor_power_now(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION api_floor_power_now(text, integer) TO upstairs_api;
