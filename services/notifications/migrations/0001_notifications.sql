-- Notifications to users and webhook deliveries to merchants, made from domain events
-- (services/notifications). Each is unique per causing event, so an event processed
-- twice could not make two; processed_events (0002) makes a redelivery a no-op anyway.

CREATE TABLE notifications (
    notification_id  uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    channel          text NOT NULL CHECK (channel IN ('EMAIL', 'SMS', 'PUSH', 'IN_APP')),
    template         text NOT NULL,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    title            text NOT NULL,
    body             text NOT NULL,
    masked_recipient text NOT NULL DEFAULT '',
    state            text NOT NULL CHECK (state IN ('QUEUED', 'SENT', 'FAILED')),
    attempt_count    integer NOT NULL DEFAULT 0,
    failure_reason   text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, user_id, channel)
);
CREATE INDEX notifications_by_user ON notifications (user_id, created_at DESC, notification_id DESC);

-- One event to one endpoint. The body is fixed when the delivery is made, so every attempt
-- (and a redelivery) sends the same bytes; the signing secret is never stored here: it is
-- read from the merchants service for each attempt.
CREATE TABLE webhook_deliveries (
    delivery_id      uuid PRIMARY KEY,
    merchant_id      uuid NOT NULL,
    endpoint_id      uuid NOT NULL,
    endpoint_url     text NOT NULL,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    body             bytea NOT NULL,
    state            text NOT NULL CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED', 'RETRYING')),
    attempt_count    integer NOT NULL DEFAULT 0,
    -- The current round of retries (the first, or one started by RedeliverWebhook): it
    -- gives up after the retry window from its start.
    round_started_at timestamptz NOT NULL DEFAULT now(),
    round_attempts   integer NOT NULL DEFAULT 0,
    manual           boolean NOT NULL DEFAULT false,  -- the next attempt was requested by hand
    next_attempt_at  timestamptz,                      -- due time; also the sender's lease
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_by_merchant ON webhook_deliveries (merchant_id, created_at DESC, delivery_id DESC);
-- What the sender reads: the deliveries with an attempt scheduled, soonest first.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state IN ('PENDING', 'RETRYING');

-- Every HTTP request made for a delivery.
CREATE TABLE webhook_attempts (
    delivery_id          uuid NOT NULL REFERENCES webhook_deliveries,
    attempt_number       integer NOT NULL,
    attempted_at         timestamptz NOT NULL,
    response_status_code integer NOT NULL DEFAULT 0,
    duration_ms          integer NOT NULL,
    error                text NOT NULL DEFAULT '',
    manual               boolean NOT NULL DEFAULT false,
    PRIMARY KEY (delivery_id, attempt_number)
);
