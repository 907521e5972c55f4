-- P2P transfers and payouts, keyed by the client's own id (the idempotency key).

CREATE TABLE transfers (
    transfer_id           uuid PRIMARY KEY,
    source_wallet_id      uuid NOT NULL,
    destination_wallet_id uuid NOT NULL,
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description           text NOT NULL DEFAULT '',
    state                 text NOT NULL DEFAULT 'PENDING'
                          CHECK (state IN ('PENDING', 'COMPLETED', 'FAILED')),
    failure_code          text,
    failure_reason        text,
    failure_message       text,
    ledger_transaction_id uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (source_wallet_id <> destination_wallet_id)
);
CREATE INDEX transfers_by_source ON transfers (source_wallet_id, created_at DESC);
CREATE INDEX transfers_by_destination ON transfers (destination_wallet_id, created_at DESC);
