-- Alerts, their history, and operator commands (the API asks, the alert engine decides).

CREATE TABLE alerts (
    id               bigserial PRIMARY KEY,
    building_id      text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    rule             text NOT NULL,          -- e.g. zone_load, floor_power, fire, stale
    subject          text NOT NULL,          -- what the rule is about: zone id, floor, sensor, tenant
    floor            integer,
    zone_id          text,
    sensor_id        text,
    tenant_ids       text[] NOT NULL DEFAULT '{}',  -- tenants whose space the alert touches
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'critical', 'trouble')),
    state            text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    latched          boolean NOT NULL DEFAULT false,  -- fire: stays until an operator resets it
    condition_active boolean NOT NULL DEFAULT true,
    shelved_until    timestamptz,
    message          text NOT NULL,
    value            double precision,
    limit_value      double precision,
    unit             text,
    opened_at        timestamptz NOT NULL,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,           -- 'engine' when the condition cleared, else the operator
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- One open (not resolved) alert per (building, rule, subject).
CREATE UNIQUE INDEX alerts_one_open ON alerts (building_id, rule, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_building_state ON alerts (building_id, state, opened_at DESC);
CREATE INDEX alerts_tenants ON alerts USING gin (tenant_ids);

CREATE TABLE alert_events (
    id        bigserial PRIMARY KEY,
    alert_id  bigint NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    at        timestamptz NOT NULL,
    kind      text NOT NULL,   -- opened, severity, acknowledged, shelved, unshelved, resolved, reset, escalated
    actor     text NOT NULL,   -- 'engine' or who acted
    severity  text,
    detail    text
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

CREATE TABLE alert_commands (
    id            bigserial PRIMARY KEY,
    alert_id      bigint NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    action        text NOT NULL CHECK (action IN ('ack', 'shelve', 'unshelve', 'reset')),
    actor         text NOT NULL,
    shelve_until  timestamptz,
    note          text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz,
    result        text CHECK (result IN ('done', 'refused')),
    detail        text
);
CREATE INDEX alert_commands_pending ON alert_commands (id) WHERE processed_at IS NULL;
