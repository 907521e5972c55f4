-- What the merchants service learns from the payment events (its consumer, service_layer/
-- payment_events.py), each written in the transaction that records the event as processed.

-- One line per captured payment and per successful refund: what a day's settlement sums.
CREATE TABLE settlement_lines (
    event_id        uuid PRIMARY KEY,         -- the payment event the line comes from
    merchant_id     uuid NOT NULL,
    payment_id      uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('CAPTURE', 'REFUND')),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    fee_minor       bigint NOT NULL DEFAULT 0 CHECK (fee_minor >= 0),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    occurred_at     timestamptz NOT NULL,
    settlement_date date NOT NULL,            -- the UTC day of occurred_at
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX settlement_lines_by_day ON settlement_lines (merchant_id, settlement_date, kind);

-- How much of each payment has been refunded so far, to turn the payment's running
-- refunded amount into one line per refund.
CREATE TABLE payment_refund_totals (
    payment_id     uuid PRIMARY KEY,
    refunded_minor bigint NOT NULL CHECK (refunded_minor >= 0)
);

-- Per-merchant, per-minute totals (the source of Cassandra's merchant_metrics rows, which
-- receive absolute values, so rewriting one is harmless).
CREATE TABLE merchant_metric_minutes (
    merchant_id uuid NOT NULL,
    minute      timestamptz NOT NULL,
    metric      text NOT NULL,                -- e.g. captured_minor:EUR, captured_count
    value       bigint NOT NULL,
    PRIMARY KEY (merchant_id, minute, metric)
);

-- Rows for Cassandra, written with the event and copied out by a periodic job; every
-- Cassandra write is idempotent (fixed keys, absolute values), so a copy repeated after a
-- crash changes nothing.
CREATE TABLE analytics_outbox (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('PAYMENT_LOG', 'MERCHANT_METRIC')),
    row_data    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
