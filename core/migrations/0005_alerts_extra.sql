-- Alert engine extras: engine state that must survive a restart, the webhook outbox, and the
-- wake-up of the engine when the API inserts an operator command.

-- When the engine last notified a critical, unacknowledged alert again (escalation).
ALTER TABLE alerts ADD COLUMN escalated_at timestamptz;
-- Fire alerts: the floors to evacuate (N-1, N, N+1 within the building).
ALTER TABLE alerts ADD COLUMN evacuation_floors integer[] NOT NULL DEFAULT '{}';

-- The hysteresis / delay state of every (rule, subject) that is not plainly "clear":
-- a confirmed level, or a pending on-/off-delay (direction +1 up, -1 down, since when).
-- A restart reads it back, so a pending on-delay completes instead of starting over.
CREATE TABLE alert_conditions (
    building_id    text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    rule           text NOT NULL,
    subject        text NOT NULL,
    level          text CHECK (level IN ('info', 'warning', 'critical', 'trouble')),
    pending_dir    smallint NOT NULL DEFAULT 0 CHECK (pending_dir IN (-1, 0, 1)),
    pending_since  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (building_id, rule, subject),
    CHECK ((pending_dir = 0) = (pending_since IS NULL))
);

-- Webhook outbox: one row per (event, URL), written in the transaction of the event, so a
-- restart loses none. Delivered in id order per URL (hence in order per alert).
CREATE TABLE alert_webhook_outbox (
    id               bigserial PRIMARY KEY,
    building_id      text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    event_id         bigint NOT NULL REFERENCES alert_events(id) ON DELETE CASCADE,
    url              text NOT NULL,
    body             bytea NOT NULL,          -- the exact JSON that is signed and sent
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    delivered_at     timestamptz
);
CREATE INDEX alert_webhook_outbox_pending ON alert_webhook_outbox (url, id)
    WHERE delivered_at IS NULL;

-- Wake the engine at once when the API asks for an operator action. The channel is
-- database-wide: the payload is only a hint, the engine reads its own pending rows.
CREATE FUNCTION alert_commands_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('alert_commands', NEW.id::text);
    RETURN NEW;
END;
$$;

CREATE TRIGGER alert_commands_notify AFTER INSERT ON alert_commands
    FOR EACH ROW EXECUTE FUNCTION alert_commands_notify();

-- MQTT outbox: every alert event is written here in its own transaction and published after
-- the commit; the row goes when the broker acknowledged it (PUBACK). A restart publishes
-- what is left again, so a crash between commit and publish loses no MQTT copy (subscribers
-- may see an event twice and drop the repeat by event_id).
CREATE TABLE alert_mqtt_outbox (
    event_id     bigint PRIMARY KEY REFERENCES alert_events(id) ON DELETE CASCADE,
    building_id  text NOT NULL REFERENCES buildings(id) ON DELETE CASCADE,
    body         bytea NOT NULL,          -- the exact JSON published
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_mqtt_outbox_building ON alert_mqtt_outbox (building_id, event_id);
