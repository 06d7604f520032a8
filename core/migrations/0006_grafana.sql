-- Grafana: the read-only role of Grafana's PostgreSQL datasource (docs/grafana.md).
--
-- grafana_reader is an operator's tool: it reads the building model, the rollups and the
-- latest values of every sensor, and the alerts, of every building. It is subject to
-- row-level security like every role but the owner (migration 0004 FORCEs RLS), so it gets
-- explicit read policies on exactly those tables and nothing else: it cannot read raw
-- readings, tokens, sessions, sign-in failures or the audit log, even where a deployment
-- grants it pg_read_all_data (deploy/postgres/initdb/10-upstairs-roles.sh does).
--
-- Roles are cluster-wide: like 0004 this creates the role when missing (no password; the
-- compose init script sets one) and refuses one that could bypass row-level security.

DO $$
DECLARE
    tbl text;
    readable text[] := ARRAY['buildings', 'floors', 'zones', 'tenants', 'leases', 'sensors',
                             'tariffs', 'tariff_periods', 'tariff_windows',
                             'rollups_1m', 'rollups_1h', 'sensor_latest', 'alerts'];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'grafana_reader') THEN
        BEGIN
            CREATE ROLE grafana_reader LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE
                NOINHERIT NOREPLICATION;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created by a concurrent migration in another schema or database
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'grafana_reader'
                AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role grafana_reader must not be superuser or bypass row-level security';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO grafana_reader', current_schema());
    FOREACH tbl IN ARRAY readable LOOP
        EXECUTE format('GRANT SELECT ON %I TO grafana_reader', tbl);
        EXECUTE format('CREATE POLICY grafana_read ON %I FOR SELECT TO grafana_reader'
                       ' USING (true)', tbl);
    END LOOP;
END;
$$;

-- The lease of each zone on each local day is what the tenant-energy dashboard needs; a view
-- owned by the migrating role would read past RLS, so it is security_invoker: it shows
-- grafana_reader exactly what the policies above let it read.
CREATE VIEW grafana_meter_tenancy WITH (security_invoker = true) AS
SELECT s.building_id, s.id AS sensor_id, s.kind, s.floor, s.tenant_id,
       '-infinity'::timestamptz AS from_ts, 'infinity'::timestamptz AS to_ts
  FROM sensors s
 WHERE s.tenant_id IS NOT NULL AND s.kind IN ('power', 'energy')
UNION ALL
SELECT s.building_id, s.id, s.kind, s.floor, l.tenant_id,
       l.valid_from::timestamp AT TIME ZONE b.timezone,
       coalesce(l.valid_to::timestamp AT TIME ZONE b.timezone, 'infinity')
  FROM sensors s
  JOIN leases l ON l.building_id = s.building_id AND l.zone_id = s.zone_id
  JOIN buildings b ON b.id = s.building_id
 WHERE s.tenant_id IS NULL AND s.kind IN ('power', 'energy');
GRANT SELECT ON grafana_meter_tenancy TO grafana_reader;
