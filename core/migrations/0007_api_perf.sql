-- API read performance: the row-level security policies of migration 0004, unchanged in
-- meaning, with each call of api_is_operator(), api_tenant_building() and api_tenant()
-- wrapped in a scalar subquery. PostgreSQL then evaluates it once per query (an InitPlan)
-- instead of once per row and table scanned; the settings they read cannot change within a
-- query. Measured as upstairs_api on the benchmark's building (docs/api.md, "Benchmark"):
-- the live floors query 1.4-1.8 ms -> 0.5-0.6 ms as an operator, 1.6-1.8 -> 1.3 ms as a
-- tenant; a tenant's power for 30 days by day 3.4-3.6 -> 3.1 ms.
-- Only the SELECT policies of the API role change; owner_all and the INSERT policies stay.

DO $$
DECLARE
    tbl text;
    building_scoped text[] := ARRAY['buildings', 'floors', 'zones', 'tariffs', 'tariff_periods',
                                    'tariff_windows'];
    sensor_scoped text[] := ARRAY['readings', 'rollups_1m', 'rollups_1h', 'sensor_latest'];
    time_col text;
BEGIN
    FOREACH tbl IN ARRAY building_scoped LOOP
        EXECUTE format('ALTER POLICY api_read ON %I USING ('
                       '(SELECT api_is_operator()) OR %I = (SELECT api_tenant_building()))',
                       tbl, CASE WHEN tbl = 'buildings' THEN 'id' ELSE 'building_id' END);
    END LOOP;
    FOREACH tbl IN ARRAY sensor_scoped LOOP
        time_col := CASE tbl WHEN 'readings' THEN 'ts' WHEN 'sensor_latest' THEN 'ts'
                    ELSE 'bucket' END;
        EXECUTE format(
            'ALTER POLICY api_read ON %1$I USING ('
            ' (SELECT api_is_operator())'
            ' OR sensor_id = ANY ((SELECT api_tenant_meters())::text[])'
            ' OR EXISTS (SELECT 1 FROM api_sensor_tenancy st WHERE st.sensor_id = %1$I.sensor_id'
            '            AND %1$I.%2$I >= st.from_ts AND %1$I.%2$I < st.to_ts))',
            tbl, time_col);
    END LOOP;
END;
$$;

ALTER POLICY api_read ON tenants USING (
    (SELECT api_is_operator())
    OR (building_id = (SELECT api_tenant_building()) AND id = (SELECT api_tenant())));
ALTER POLICY api_read ON leases USING (
    (SELECT api_is_operator())
    OR (building_id = (SELECT api_tenant_building()) AND tenant_id = (SELECT api_tenant())));
ALTER POLICY api_read ON sensors USING (
    (SELECT api_is_operator())
    OR (building_id = (SELECT api_tenant_building())
        AND (tenant_id = (SELECT api_tenant())
             OR (tenant_id IS NULL AND zone_id IN (
                 SELECT l.zone_id FROM leases l
                  WHERE l.building_id = (SELECT api_tenant_building())
                    AND l.tenant_id = (SELECT api_tenant()))))));
ALTER POLICY api_read ON alerts USING (
    (SELECT api_is_operator())
    OR (building_id = (SELECT api_tenant_building()) AND (SELECT api_tenant()) = ANY (tenant_ids)));
ALTER POLICY api_read ON alert_events USING (
    (SELECT api_is_operator()) OR EXISTS (SELECT 1 FROM alerts a WHERE a.id = alert_id));
ALTER POLICY api_read ON alert_commands USING (
    (SELECT api_is_operator()) OR EXISTS (SELECT 1 FROM alerts a WHERE a.id = alert_id));
