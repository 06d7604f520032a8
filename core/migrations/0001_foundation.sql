-- Foundation schema: the building model, raw readings, latest values and dead letters.
-- Names are unqualified: the schema comes from the connection's search_path, so tests can
-- give each test a schema of its own.

CREATE TABLE buildings (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    timezone    text NOT NULL,
    -- The alert-rule parameters of the building file (core.alert_config.AlertConfig).
    alert_config jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE floors (
    building_id        text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    number             integer NOT NULL,
    name               text,
    area_m2            double precision NOT NULL CHECK (area_m2 > 0),
    height_m           double precision NOT NULL CHECK (height_m > 0),
    load_limit_kg_m2   double precision NOT NULL CHECK (load_limit_kg_m2 > 0),
    power_capacity_kw  double precision NOT NULL CHECK (power_capacity_kw > 0),
    PRIMARY KEY (building_id, number)
);

CREATE TABLE zones (
    building_id       text NOT NULL,
    id                text NOT NULL,
    floor             integer NOT NULL,
    name              text,
    area_m2           double precision NOT NULL CHECK (area_m2 > 0),
    load_limit_kg_m2  double precision CHECK (load_limit_kg_m2 > 0),
    PRIMARY KEY (building_id, id),
    FOREIGN KEY (building_id, floor) REFERENCES floors(building_id, number) ON DELETE CASCADE
);

CREATE TABLE tariffs (
    building_id  text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    id           text NOT NULL,
    currency     text NOT NULL,
    PRIMARY KEY (building_id, id)
);

CREATE TABLE tariff_periods (
    building_id    text NOT NULL,
    tariff_id      text NOT NULL,
    name           text NOT NULL,
    price_per_kwh  numeric(12, 6) NOT NULL CHECK (price_per_kwh >= 0),
    PRIMARY KEY (building_id, tariff_id, name),
    FOREIGN KEY (building_id, tariff_id) REFERENCES tariffs(building_id, id) ON DELETE CASCADE
);

-- Windows in local time of the building: [start_minute, end_minute) of the day.
CREATE TABLE tariff_windows (
    building_id   text NOT NULL,
    tariff_id     text NOT NULL,
    period        text NOT NULL,
    start_minute  integer NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute    integer NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
    PRIMARY KEY (building_id, tariff_id, start_minute),
    FOREIGN KEY (building_id, tariff_id, period)
        REFERENCES tariff_periods(building_id, tariff_id, name) ON DELETE CASCADE,
    CHECK (start_minute < end_minute)
);

CREATE TABLE tenants (
    building_id    text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    id             text NOT NULL,
    name           text NOT NULL,
    contracted_kw  double precision NOT NULL CHECK (contracted_kw > 0),
    tariff_id      text NOT NULL,
    PRIMARY KEY (building_id, id),
    FOREIGN KEY (building_id, tariff_id) REFERENCES tariffs(building_id, id)
);

CREATE TABLE leases (
    building_id  text NOT NULL,
    tenant_id    text NOT NULL,
    zone_id      text NOT NULL,
    valid_from   date NOT NULL,
    valid_to     date,
    PRIMARY KEY (building_id, zone_id, valid_from),
    FOREIGN KEY (building_id, tenant_id) REFERENCES tenants(building_id, id) ON DELETE CASCADE,
    FOREIGN KEY (building_id, zone_id) REFERENCES zones(building_id, id) ON DELETE CASCADE,
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);

-- Sensor ids are unique across buildings: readings are keyed by (sensor_id, ts).
CREATE TABLE sensors (
    id           text PRIMARY KEY,
    building_id  text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('power', 'energy', 'load', 'temperature', 'fire')),
    unit         text NOT NULL,
    floor        integer NOT NULL,
    zone_id      text,
    tenant_id    text,
    interval_s   double precision NOT NULL CHECK (interval_s > 0),
    active       boolean NOT NULL DEFAULT true,
    FOREIGN KEY (building_id, floor) REFERENCES floors(building_id, number),
    FOREIGN KEY (building_id, zone_id) REFERENCES zones(building_id, id),
    FOREIGN KEY (building_id, tenant_id) REFERENCES tenants(building_id, id)
);
CREATE INDEX sensors_building_floor ON sensors (building_id, floor);

-- Raw readings. No foreign key to sensors: the ingester checks the registry before it
-- writes, and a key check per row would halve the insert rate.
-- With TimescaleDB available, readings is a hypertable (1-day chunks); on plain PostgreSQL it
-- is range-partitioned by month and the platform creates the partitions it needs
-- (ensure_readings_partition) before it writes into a new month.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        CREATE TABLE readings (
            sensor_id  text NOT NULL,
            ts         timestamptz NOT NULL,
            value      double precision NOT NULL,
            PRIMARY KEY (sensor_id, ts)
        );
        PERFORM create_hypertable('readings', 'ts', chunk_time_interval => interval '1 day');
    ELSE
        CREATE TABLE readings (
            sensor_id  text NOT NULL,
            ts         timestamptz NOT NULL,
            value      double precision NOT NULL,
            PRIMARY KEY (sensor_id, ts)
        ) PARTITION BY RANGE (ts);
    END IF;
END;
$$;

-- Creates the month's partition of readings when it is missing. A no-op on a hypertable.
CREATE FUNCTION ensure_readings_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    month_end   timestamptz := month_start + interval '1 month';
    part_name   text := 'readings_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYYMM');
    parent_schema text;
    parent_kind   "char";
BEGIN
    SELECT n.nspname, c.relkind INTO parent_schema, parent_kind
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = 'readings'::regclass;
    IF parent_kind <> 'p' THEN
        RETURN NULL;
    END IF;
    IF to_regclass(quote_ident(parent_schema) || '.' || quote_ident(part_name)) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.readings FOR VALUES FROM (%L) TO (%L)',
            parent_schema, part_name, parent_schema, month_start, month_end);
    END IF;
    RETURN part_name;
END;
$$;

SELECT ensure_readings_partition(now() - interval '1 month');
SELECT ensure_readings_partition(now());
SELECT ensure_readings_partition(now() + interval '1 month');

-- The newest reading of each sensor by its own timestamp (not by arrival).
CREATE TABLE sensor_latest (
    sensor_id    text PRIMARY KEY,
    ts           timestamptz NOT NULL,
    value        double precision NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL,
    sensor_id    text
);
CREATE INDEX dead_letters_received ON dead_letters (received_at);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);
