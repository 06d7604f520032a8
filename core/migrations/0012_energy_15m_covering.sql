-- energy_15m's key carries the energy: a month's bill (2,900 quarter hours per meter) reads
-- the quarters from the index alone (an index-only scan: no visit to a heap page per
-- quarter; 1 ms of a 3.8 ms bill measured at the reference building). The ON CONFLICT
-- (sensor_id, bucket) of the rollup refresh infers this key as it did the old one.
--
-- An index-only scan skips the heap only for pages the visibility map marks all-visible:
-- closed quarters are not written again (late data aside), and vacuuming this small table
-- after 2% of new or changed rows (instead of 20%) keeps the map current. Updating a
-- quarter's energy is no longer a HOT update (the energy is in the index now): one index
-- entry per open quarter and meter per refresh, which bottom-up index deletion clears.
ALTER TABLE energy_15m
    DROP CONSTRAINT energy_15m_pkey,
    ADD CONSTRAINT energy_15m_pkey PRIMARY KEY (sensor_id, bucket) INCLUDE (energy_kwh);
ALTER TABLE energy_15m SET (autovacuum_vacuum_scale_factor = 0.02,
                            autovacuum_vacuum_insert_scale_factor = 0.02);

-- The backfill of migration 0011, days first from the hourly rollups: where a building's
-- local midnights are on UTC hours (every whole-hour offset), a day is the sum of its 24 (23,
-- 25) hourly rollups, which cover it whole wherever 1-minute rollups do and also where only
-- hourly history is kept; days of other offsets (UTC+05:30) come from the 1-minute rollups,
-- as the rollup refresh keeps them. Migration 0011's version read the minutes first and then
-- the hours with a NOT EXISTS per hourly row: a day with minutes for part of it only came out
-- short, and planned without statistics (a freshly COPYed history, as `upstairs bench api
-- --days 365 --raw-days 35` seeds), the subquery scanned a sensor's every minute per hourly
-- row: a 365-day backfill ran for more than 15 minutes instead of seconds.
--
-- backfill_days_from_hours() writes a day from its hours where that is exact, over a day
-- that counts fewer readings (one that 0011 wrote short), and leaves every other day alone.
CREATE FUNCTION backfill_days_from_hours(only_building text DEFAULT NULL) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT h.sensor_id, date_trunc('day', h.bucket, b.timezone), sum(h.count), sum(h.sum),
           min(h.min), max(h.max), max(h.last_ts),
           (array_agg(h.last_value ORDER BY h.last_ts DESC))[1], sum(h.energy_kwh)
      FROM rollups_1h h JOIN sensors s ON s.id = h.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE only_building IS NULL OR b.id = only_building
     GROUP BY 1, 2, b.timezone
    HAVING date_trunc('hour', date_trunc('day', h.bucket, b.timezone), 'UTC')
               = date_trunc('day', h.bucket, b.timezone)
       AND date_trunc('hour', (date_trunc('day', h.bucket, b.timezone) AT TIME ZONE b.timezone
                               + interval '1 day') AT TIME ZONE b.timezone, 'UTC')
               = (date_trunc('day', h.bucket, b.timezone) AT TIME ZONE b.timezone
                  + interval '1 day') AT TIME ZONE b.timezone
    ON CONFLICT (sensor_id, bucket) DO UPDATE
       SET count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
           last_ts = excluded.last_ts, last_value = excluded.last_value,
           energy_kwh = excluded.energy_kwh
     WHERE r.count < excluded.count;
$$;

-- Then the minutes, for the days the hours cannot give exactly; last, a day of a half-hour
-- offset with no minute at all (history older than the 1-minute rollups) from the hours that
-- start in it, as 0011 did: its edges are off by the half hour, and the API does not read
-- such days (tenant power by day reads hourly rollups where midnights are off the UTC hour,
-- api.series.whole_days); Grafana's daily panels would have no row for them otherwise.
-- backfill_days does that for every building's days, or for one building's.
CREATE FUNCTION backfill_days(only_building text DEFAULT NULL) RETURNS void LANGUAGE sql AS $$
    SELECT backfill_days_from_hours(only_building);
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT m.sensor_id, date_trunc('day', m.bucket, b.timezone), sum(m.count), sum(m.sum),
           min(m.min), max(m.max), max(m.last_ts),
           (array_agg(m.last_value ORDER BY m.last_ts DESC))[1], sum(m.energy_kwh)
      FROM rollups_1m m JOIN sensors s ON s.id = m.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE only_building IS NULL OR b.id = only_building
     GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO NOTHING;
    INSERT INTO rollups_1d AS r (sensor_id, bucket, count, sum, min, max, last_ts, last_value,
                                 energy_kwh)
    SELECT h.sensor_id, date_trunc('day', h.bucket, b.timezone), sum(h.count), sum(h.sum),
           min(h.min), max(h.max), max(h.last_ts),
           (array_agg(h.last_value ORDER BY h.last_ts DESC))[1], sum(h.energy_kwh)
      FROM rollups_1h h JOIN sensors s ON s.id = h.sensor_id
      JOIN buildings b ON b.id = s.building_id
     WHERE only_building IS NULL OR b.id = only_building
     GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO NOTHING;
$$;

CREATE OR REPLACE FUNCTION backfill_day_quarter_rollups() RETURNS void LANGUAGE sql AS $$
    INSERT INTO energy_15m (sensor_id, bucket, energy_kwh)
    SELECT sensor_id, date_bin('15 minutes', bucket, 'epoch'), sum(energy_kwh)
      FROM rollups_1m WHERE energy_kwh IS NOT NULL GROUP BY 1, 2
    ON CONFLICT (sensor_id, bucket) DO UPDATE SET energy_kwh = excluded.energy_kwh;
    SELECT backfill_days();
$$;

-- A building whose time zone changed (core.building_store.apply_building): its daily rollups
-- were days of the old zone; they are built again from its hours and minutes.
-- Returns the number of daily rollups the building has now.
CREATE FUNCTION rebuild_local_days(building text) RETURNS bigint LANGUAGE sql AS $$
    DELETE FROM rollups_1d d USING sensors s
     WHERE s.id = d.sensor_id AND s.building_id = building;
    SELECT backfill_days(building);
    SELECT count(*) FROM rollups_1d d JOIN sensors s ON s.id = d.sensor_id
     WHERE s.building_id = building;
$$;

-- Repair what 0011 wrote short on a database that already had history.
SELECT backfill_days_from_hours();
ANALYZE rollups_1d;
