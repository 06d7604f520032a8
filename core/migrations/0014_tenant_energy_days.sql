-- A tenant's energy by local day, for bills (docs/api.md, "Bills"): one row per tenant and
-- local day of its building with the day's kWh per time-of-use period of the tenant's tariff,
-- its highest quarter hour and the number of quarter hours with data, summed over the
-- tenant's energy meters as a bill counts them (its own meters at all times, a leased zone's
-- for the local days of the lease). A month's bill then reads ~31 short rows of the tenant
-- instead of ~3,000 quarter hours per meter, each behind the sensor-scoped row-level security
-- policy.
--
-- The meters and the time each counts for a tenant are those of the view
-- grafana_meter_tenancy (migration 0006; the windows of api.tenants.METERS_SQL too).
--
-- A row names the tariff windows its periods are of (tariff_key): a bill whose tariff has
-- other windows (changed by hand, or not yet rebuilt) does not use the rows and sums the
-- quarter hours of energy_15m instead, as before this migration. Prices are not in the rows:
-- a changed price needs nothing rebuilt. What changes a tenant's days is kept as follows:
--   * energy_15m changes (the rollup refresh, the bench seed, a backfill): a statement trigger
--     recomputes the tenant-days its rows fall in (refresh_tenant_days);
--   * a building applied with other sensors, leases, tenants, tariff windows or time zone:
--     core.building_store.apply_building calls rebuild_tenant_days, under the rollup
--     refresher's lock. Leases or sensors edited by hand in SQL need the same call.

CREATE TABLE tenant_energy_days (
    building_id text NOT NULL,
    tenant_id   text NOT NULL,
    day         timestamptz NOT NULL,        -- the local day's start (local_midnight)
    tariff_key  text NOT NULL,               -- the windows of the periods (tariff_key())
    periods     text[] NOT NULL,             -- the periods with data, by name
    kwh         double precision[] NOT NULL, -- their kWh, same order
    quarters    integer NOT NULL,            -- quarter hours with data
    peak_kwh    double precision NOT NULL,   -- the highest quarter hour's kWh
    peak_at     timestamptz NOT NULL,        -- its start (the earliest of equal ones)
    PRIMARY KEY (building_id, tenant_id, day)
) WITH (fillfactor = 70);

-- A tariff's windows as one text: 'period:start-end' (minutes of the local day) by period
-- (bytewise) and start, comma-separated. api.bills computes the same of the tariff it read.
CREATE FUNCTION tariff_key(b text, tariff text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT string_agg(w.period || ':' || w.start_minute || '-' || w.end_minute, ','
                      ORDER BY w.period COLLATE "C", w.start_minute)
      FROM tariff_windows w WHERE w.building_id = b AND w.tariff_id = tariff
$$;

-- The start of local date ``d``: its midnight, the earlier one where midnight happens twice
-- (America/Havana in November, Atlantic/Azores in October: the clock goes back from 01:00 to
-- 00:00), as Python's zoneinfo reads it (fold 0; core.billing.month_bounds). PostgreSQL reads
-- an ambiguous local time as the later instant, and date_trunc('day', ...) too, so those days
-- would start an hour late and the hour before would fall between two days. Where midnight
-- does not exist (America/Santiago in September) both read the 01:00 after the gap.
CREATE FUNCTION local_midnight(d date, tz text) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT c FROM (VALUES (m - interval '1 hour'), (m - interval '30 minutes')) v(c)
          WHERE (c AT TIME ZONE tz) = d::timestamp ORDER BY c LIMIT 1),
        m)
      FROM (SELECT d::timestamp AT TIME ZONE tz AS m) x
$$;

-- The start of the local day that ``ts`` falls in (see local_midnight).
CREATE FUNCTION local_day_start(ts timestamptz, tz text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT local_midnight((ts AT TIME ZONE tz)::date, tz)
$$;

-- The days ``days`` (local day starts) of the tenants ``tenant_ids`` (pairwise) in building
-- ``b``, computed again from energy_15m. Returns the number of rows written.
CREATE FUNCTION refresh_tenant_days(b text, tenant_ids text[], days timestamptz[])
RETURNS bigint LANGUAGE sql AS $$
    WITH k AS (
        SELECT DISTINCT k.tenant_id, k.day, bl.timezone,
               local_midnight((k.day AT TIME ZONE bl.timezone)::date + 1, bl.timezone) AS day_end
          FROM unnest(tenant_ids, days) AS k(tenant_id, day) JOIN buildings bl ON bl.id = b
    ), q AS (  -- the quarter hours of each tenant-day, summed over the tenant's meters
        SELECT k.tenant_id, k.day, e.bucket, sum(e.energy_kwh) AS kwh,
               (date_part('hour', e.bucket AT TIME ZONE k.timezone) * 60
                + date_part('minute', e.bucket AT TIME ZONE k.timezone))::int AS minute
          FROM k JOIN grafana_meter_tenancy m ON m.building_id = b AND m.kind = 'energy'
           AND m.tenant_id = k.tenant_id
          JOIN energy_15m e ON e.sensor_id = m.sensor_id
           AND e.bucket >= greatest(m.from_ts, k.day) AND e.bucket < least(m.to_ts, k.day_end)
         GROUP BY k.tenant_id, k.day, e.bucket, k.timezone
    ), t AS (
        SELECT tn.id AS tenant_id, tn.tariff_id, tariff_key(b, tn.tariff_id) AS key
          FROM tenants tn WHERE tn.building_id = b AND tn.id = ANY (tenant_ids)
    ), p AS (  -- per period: a quarter hour is in the period of its start, in local time
        SELECT q.tenant_id, q.day, w.period, sum(q.kwh) AS kwh
          FROM q JOIN t ON t.tenant_id = q.tenant_id
          JOIN tariff_windows w ON w.building_id = b AND w.tariff_id = t.tariff_id
           AND w.start_minute <= q.minute AND q.minute < w.end_minute
         GROUP BY 1, 2, 3
    ), peak AS (
        SELECT DISTINCT ON (tenant_id, day) tenant_id, day, kwh, bucket
          FROM q ORDER BY tenant_id, day, kwh DESC, bucket
    ), n AS (
        SELECT tenant_id, day, count(*) AS quarters FROM q GROUP BY 1, 2
    ), written AS (
        INSERT INTO tenant_energy_days AS d (building_id, tenant_id, day, tariff_key, periods,
                                             kwh, quarters, peak_kwh, peak_at)
        SELECT b, pk.tenant_id, pk.day, t.key,
               array_agg(p.period ORDER BY p.period COLLATE "C"),
               array_agg(p.kwh ORDER BY p.period COLLATE "C"), n.quarters, pk.kwh, pk.bucket
          FROM peak pk JOIN n USING (tenant_id, day) JOIN t USING (tenant_id)
          JOIN p USING (tenant_id, day)
         GROUP BY pk.tenant_id, pk.day, t.key, n.quarters, pk.kwh, pk.bucket
        ON CONFLICT (building_id, tenant_id, day) DO UPDATE
           SET tariff_key = excluded.tariff_key, periods = excluded.periods,
               kwh = excluded.kwh, quarters = excluded.quarters,
               peak_kwh = excluded.peak_kwh, peak_at = excluded.peak_at
        RETURNING 1
    )
    SELECT count(*) FROM written;
$$;

-- All of building ``b``'s tenant-days, built again. Returns the number of rows it has now.
CREATE FUNCTION rebuild_tenant_days(b text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    t text[];
    d timestamptz[];
BEGIN
    DELETE FROM tenant_energy_days WHERE building_id = b;
    SELECT array_agg(x.tenant_id), array_agg(x.day) INTO t, d
      FROM (SELECT DISTINCT m.tenant_id, local_day_start(e.bucket, bl.timezone) AS day
              FROM grafana_meter_tenancy m
              JOIN buildings bl ON bl.id = m.building_id
              JOIN energy_15m e ON e.sensor_id = m.sensor_id
               AND e.bucket >= m.from_ts AND e.bucket < m.to_ts
             WHERE m.building_id = b AND m.kind = 'energy') x;

    IF t IS NULL THEN
        RETURN 0;
    END IF;
    RETURN refresh_tenant_days(b, t, d);
END;
$$;

-- After each statement that writes energy_15m: the tenant-days of its rows.
CREATE FUNCTION energy_15m_tenant_days() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT x.building_id, array_agg(x.tenant_id) AS t, array_agg(x.day) AS d
          FROM (SELECT DISTINCT m.building_id, m.tenant_id,
                       local_day_start(c.bucket, bl.timezone) AS day
                  FROM (SELECT DISTINCT sensor_id, bucket FROM changed) c
                  JOIN grafana_meter_tenancy m ON m.sensor_id = c.sensor_id
                   AND m.kind = 'energy' AND c.bucket >= m.from_ts AND c.bucket < m.to_ts
                  JOIN buildings bl ON bl.id = m.building_id) x
         GROUP BY x.building_id
    LOOP
        PERFORM refresh_tenant_days(r.building_id, r.t, r.d);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenant_days_on_insert AFTER INSERT ON energy_15m
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION energy_15m_tenant_days();
CREATE TRIGGER tenant_days_on_update AFTER UPDATE ON energy_15m
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION energy_15m_tenant_days();

SELECT rebuild_tenant_days(id) FROM buildings;
ANALYZE tenant_energy_days;

-- Row-level security: operators every row; a tenant its own rows; with no tenant set, none.
ALTER TABLE tenant_energy_days ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_energy_days FORCE ROW LEVEL SECURITY;
CREATE POLICY owner_all ON tenant_energy_days TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY api_read ON tenant_energy_days FOR SELECT TO upstairs_api USING (
    (SELECT api_is_operator())
    OR (building_id = (SELECT api_tenant_building()) AND tenant_id = (SELECT api_tenant())));
GRANT SELECT ON tenant_energy_days TO upstairs_api;
GRANT SELECT ON tenant_energy_days TO grafana_reader;
CREATE POLICY grafana_read ON tenant_energy_days FOR SELECT TO grafana_reader USING (true);
