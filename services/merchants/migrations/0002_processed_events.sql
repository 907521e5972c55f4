-- Processed events (services/framework/consumer.py). A consuming service copies this file
-- as its next migration: the consumer inserts a row here in the same transaction as the
-- event's effect, so an event redelivered by Kafka (after a crash between the commit and
-- the offset commit, or a republish by a producer's relay) finds its row and changes
-- nothing. A poison event that went to the dead-letter topic is recorded too.

CREATE TABLE processed_events (
    consumer      text NOT NULL,             -- the consumer (its Kafka group id)
    event_id      uuid NOT NULL,             -- EventEnvelope.event_id
    event_type    text NOT NULL,
    topic         text NOT NULL,             -- where it was read, for inspection
    kafka_partition integer NOT NULL,
    kafka_offset  bigint NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('PROCESSED', 'DEAD_LETTERED')),
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- What the purge reads: the oldest rows, past the deduplication window.
CREATE INDEX processed_events_by_time ON processed_events (processed_at);
