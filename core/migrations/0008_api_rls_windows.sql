-- API read performance: the sensor-scoped row-level security policies of migrations 0004 and
-- 0007, unchanged in meaning, without a subquery per row.
--
-- Before, a row of a zone sensor (one the tenant sees only while it leases the zone) ran an
-- EXISTS over the view api_sensor_tenancy (a UNION ALL with joins) per row: a tenant's day of
-- a floor by minute is thousands of such rows. Now the tenant's zone sensors and their lease
-- windows are computed once per query (InitPlans, like api_tenant_meters()): two arrays in
-- the same order, the sensor ids and, for each, the union of its lease windows as a
-- multirange. A row is visible when its time lies in the window of its sensor: an array
-- lookup and a range test per row, no subquery.
--
-- Same rule as before: operators see every row; a tenant sees its own meters at all times and
-- a zone sensor (one without a tenant) for the local days it leases the zone (the windows of
-- api_sensor_tenancy, from_ts inclusive, to_ts exclusive); with no tenant set, nothing.

-- The three are PL/pgSQL, not SQL: PL/pgSQL keeps the plan of its query for the session,
-- where a non-inlined SQL function plans its body again in every query that calls it
-- (about 0.3 ms each, three times per query of a tenant). Same queries, same results.

-- The current tenant's own meters (visible at all times); replaces the SQL function of 0004.
CREATE OR REPLACE FUNCTION api_tenant_meters() RETURNS text[] LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(sensor_id), '{}') FROM api_sensor_tenancy
             WHERE from_ts = '-infinity');
END;
$$;

-- The zone sensors the current tenant leases or leased, ordered by id; empty when none.
CREATE FUNCTION api_tenant_zone_sensors() RETURNS text[] LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(sensor_id ORDER BY sensor_id), '{}')
              FROM (SELECT DISTINCT sensor_id FROM api_sensor_tenancy
                     WHERE from_ts <> '-infinity') z);
END;
$$;

-- The lease windows of api_tenant_zone_sensors(), in the same order: one multirange each.
CREATE FUNCTION api_tenant_zone_windows() RETURNS tstzmultirange[] LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg(windows ORDER BY sensor_id), '{}')
              FROM (SELECT sensor_id, range_agg(tstzrange(from_ts, to_ts, '[)')) AS windows
                      FROM api_sensor_tenancy WHERE from_ts <> '-infinity'
                     GROUP BY sensor_id) z);
END;
$$;

DO $$
DECLARE
    tbl text;
    sensor_scoped text[] := ARRAY['readings', 'rollups_1m', 'rollups_1h', 'sensor_latest'];
    time_col text;
BEGIN
    FOREACH tbl IN ARRAY sensor_scoped LOOP
        time_col := CASE tbl WHEN 'readings' THEN 'ts' WHEN 'sensor_latest' THEN 'ts'
                    ELSE 'bucket' END;
        EXECUTE format(
            'ALTER POLICY api_read ON %1$I USING ('
            ' (SELECT api_is_operator())'
            ' OR sensor_id = ANY ((SELECT api_tenant_meters())::text[])'
            ' OR coalesce((SELECT api_tenant_zone_windows())[array_position('
            '     (SELECT api_tenant_zone_sensors()), sensor_id)] @> %2$I, false))',
            tbl, time_col);
    END LOOP;
END;
$$;
