-- The transactional outbox (services/framework/outbox.py). A service copies this file as
-- its next migration: its events are rows here, written in the same transaction as the
-- change they describe, and published to Kafka by the service's relay in `position`
-- order, which follows commit order for any one aggregate (its changes are serialised
-- by its row lock).

CREATE TABLE outbox (
    position      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid NOT NULL UNIQUE,      -- EventEnvelope.event_id: an event is stored once
    topic         text NOT NULL,             -- interpay.events.v1.<aggregate type>
    message_key   text NOT NULL,             -- the aggregate id: one aggregate, one partition
    envelope      bytea NOT NULL,            -- the serialized interpay.events.v1.EventEnvelope
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz                -- set once Kafka acknowledged the message
);

-- What the relay reads: the unpublished rows, oldest first; small whatever the table's size.
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
