-- Payments, their state history, refunds, and saved payment methods (card tokens with
-- brand, last4 and expiry only: never a card number or a CVV).

CREATE TABLE payments (
    payment_id               uuid PRIMARY KEY,
    merchant_id              uuid NOT NULL,
    payer_wallet_id          uuid,
    card_token               uuid,
    payer_user_id            uuid,
    amount                   bigint NOT NULL CHECK (amount > 0),
    currency                 char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    captured_amount          bigint NOT NULL DEFAULT 0 CHECK (captured_amount >= 0 AND captured_amount <= amount),
    refunded_amount          bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0 AND refunded_amount <= captured_amount),
    fee_amount               bigint NOT NULL DEFAULT 0 CHECK (fee_amount >= 0),
    capture_method           text NOT NULL CHECK (capture_method IN ('AUTOMATIC', 'MANUAL')),
    description              text NOT NULL DEFAULT '',
    merchant_reference       text NOT NULL DEFAULT '',
    client_context           bytea NOT NULL DEFAULT '',
    state                    text NOT NULL DEFAULT 'INITIATED',
    failure_code             text NOT NULL DEFAULT '',
    failure_reason           text NOT NULL DEFAULT '',
    fraud_assessment         bytea,
    wallet_hold_id           uuid,
    processor_reference      text NOT NULL DEFAULT '',
    idempotency_key          text,
    request_hash             text NOT NULL,
    version                  bigint NOT NULL DEFAULT 1,
    authorization_expires_at timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CHECK ((payer_wallet_id IS NULL) <> (card_token IS NULL))
);
-- The seed's indexes: a merchant's payments by state over time, the in-flight ones, and
-- a covering index for captured totals (settlements).
CREATE INDEX idx_payments_merchant_status_date ON payments (merchant_id, state, created_at DESC);
CREATE INDEX idx_payments_merchant_date ON payments (merchant_id, created_at DESC, payment_id DESC);
CREATE INDEX idx_active_payments ON payments (created_at) WHERE state IN ('PENDING', 'AUTHORIZED', 'REQUIRES_REVIEW');
CREATE INDEX idx_payments_summary ON payments (merchant_id, amount, state, created_at) WHERE state = 'CAPTURED';

CREATE TABLE payment_transactions (
    transaction_id uuid PRIMARY KEY,
    payment_id     uuid NOT NULL REFERENCES payments,
    from_state     text NOT NULL,
    to_state       text NOT NULL,
    reason         text NOT NULL DEFAULT '',
    failure_code   text NOT NULL DEFAULT '',
    reference      text NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_transactions_by_payment ON payment_transactions (payment_id, created_at);

CREATE TABLE refunds (
    refund_id      uuid PRIMARY KEY,
    payment_id     uuid NOT NULL REFERENCES payments,
    amount         bigint NOT NULL CHECK (amount > 0),
    currency       char(3) NOT NULL,
    reason         text NOT NULL,
    state          text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'SUCCEEDED', 'FAILED')),
    failure_reason text NOT NULL DEFAULT '',
    request_hash   text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_by_payment ON refunds (payment_id, created_at DESC);

CREATE TABLE payment_methods (
    payment_method_id uuid PRIMARY KEY,
    user_id           uuid NOT NULL,
    card_token        uuid NOT NULL,
    brand             text NOT NULL,
    last4             char(4) NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    expiry_month      integer NOT NULL CHECK (expiry_month BETWEEN 1 AND 12),
    expiry_year       integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, card_token)
);
