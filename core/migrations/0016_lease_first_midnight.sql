-- A lease starts and ends at a local midnight of its building: where midnight happens twice
-- (America/Havana in November, Atlantic/Azores in October) at the first of the two, as a
-- local day does since migrations 0014 and 0015 (local_midnight). The windows were the
-- second midnight (PostgreSQL reads an ambiguous local time as the later instant), so on such
-- a handover day the hour between the midnights was still the old lessee's: in what the new
-- one may read (row-level security) and in whose bill and tenant-day it counted.

CREATE OR REPLACE VIEW api_sensor_tenancy AS
SELECT s.id AS sensor_id, '-infinity'::timestamptz AS from_ts, 'infinity'::timestamptz AS to_ts
  FROM sensors s
 WHERE s.building_id = api_tenant_building() AND s.tenant_id = api_tenant()
UNION ALL
SELECT s.id, local_midnight(l.valid_from, b.timezone),
       coalesce(local_midnight(l.valid_to, b.timezone), 'infinity')
  FROM sensors s
  JOIN leases l ON l.building_id = s.building_id AND l.zone_id = s.zone_id
  JOIN buildings b ON b.id = s.building_id
 WHERE s.tenant_id IS NULL AND s.building_id = api_tenant_building()
   AND l.tenant_id = api_tenant();

CREATE OR REPLACE VIEW grafana_meter_tenancy WITH (security_invoker = true) AS
SELECT s.building_id, s.id AS sensor_id, s.kind, s.floor, s.tenant_id,
       '-infinity'::timestamptz AS from_ts, 'infinity'::timestamptz AS to_ts
  FROM sensors s
 WHERE s.tenant_id IS NOT NULL AND s.kind IN ('power', 'energy')
UNION ALL
SELECT s.building_id, s.id, s.kind, s.floor, l.tenant_id,
       local_midnight(l.valid_from, b.timezone),
       coalesce(local_midnight(l.valid_to, b.timezone), 'infinity')
  FROM sensors s
  JOIN leases l ON l.building_id = s.building_id AND l.zone_id = s.zone_id
  JOIN buildings b ON b.id = s.building_id
 WHERE s.tenant_id IS NULL AND s.kind IN ('power', 'energy');

-- The tenant-days (migration 0014) of the buildings with a lease on such a day: again.
SELECT rebuild_tenant_days(b.id)
  FROM buildings b
 WHERE EXISTS (SELECT 1 FROM leases l
                WHERE l.building_id = b.id
                  AND (local_midnight(l.valid_from, b.timezone)
                           <> l.valid_from::timestamp AT TIME ZONE b.timezone
                       OR local_midnight(l.valid_to, b.timezone)
                           <> l.valid_to::timestamp AT TIME ZONE b.timezone));
