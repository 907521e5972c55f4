-- The Idempotency-Key of the creating admin RPCs (CreateFraudRule, AddBlacklistEntry) and
-- what the key's first call created: a retry under the same key finds the row (or waits
-- on its primary key while the first call commits) and replays it. Kept for 24 hours.
CREATE TABLE idempotency_keys (
    rpc             text NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    resource_id     uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rpc, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
