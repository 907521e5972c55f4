-- Daily settlements (service_layer/settlements.py): one per merchant and UTC day, made in
-- one transaction with the lines it settles, then paid out through the transfers service.

CREATE TABLE merchant_settlements (
    settlement_id      uuid PRIMARY KEY,
    merchant_id        uuid NOT NULL REFERENCES merchants,
    settlement_date    date NOT NULL,             -- the UTC day settled
    currency           char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    gross_captured_minor bigint NOT NULL CHECK (gross_captured_minor >= 0),
    refunds_minor      bigint NOT NULL CHECK (refunds_minor >= 0),
    fees_minor         bigint NOT NULL CHECK (fees_minor >= 0),
    -- gross_captured - refunds - fees; may be zero or negative.
    net_minor          bigint NOT NULL
                       CHECK (net_minor = gross_captured_minor - refunds_minor - fees_minor),
    -- The deficit of earlier negative days taken from this one (<= 0), and what is left
    -- of it for the next settlement (<= 0): payout = max(0, net + carried_in).
    carried_in_minor   bigint NOT NULL DEFAULT 0 CHECK (carried_in_minor <= 0),
    payout_minor       bigint NOT NULL CHECK (payout_minor >= 0),
    carried_out_minor  bigint NOT NULL DEFAULT 0 CHECK (carried_out_minor <= 0),
    state              text NOT NULL CHECK (state IN ('PENDING', 'PAID_OUT', 'FAILED')),
    -- uuid5 of (merchant, day): a re-run or a crash before the payout reaches the same one.
    payout_id          uuid UNIQUE,
    -- What the payout is asked for, fixed at settlement so every retry is the same request.
    source_wallet_id   uuid,
    payout_account     jsonb,
    failure_reason     text NOT NULL DEFAULT '',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, settlement_date),
    CHECK (payout_minor = greatest(0, net_minor + carried_in_minor)),
    CHECK (carried_out_minor = least(0, net_minor + carried_in_minor)),
    CHECK ((payout_minor > 0) = (payout_id IS NOT NULL)),
    CHECK (payout_minor = 0 OR (source_wallet_id IS NOT NULL AND payout_account IS NOT NULL)),
    CHECK ((state = 'FAILED') = (failure_reason <> ''))
);
CREATE INDEX merchant_settlements_by_merchant
    ON merchant_settlements (merchant_id, settlement_date DESC, settlement_id DESC);
-- The resume job's work list: payouts whose outcome is not known yet.
CREATE INDEX merchant_settlements_pending ON merchant_settlements (updated_at) WHERE state = 'PENDING';

-- Each line is settled once: by the settlement that took it (of its day, or of a later day
-- for a line whose event arrived after its own day was settled).
ALTER TABLE settlement_lines ADD COLUMN settlement_id uuid REFERENCES merchant_settlements;
CREATE INDEX settlement_lines_unsettled ON settlement_lines (merchant_id, settlement_date)
    WHERE settlement_id IS NULL;
CREATE INDEX settlement_lines_by_settlement ON settlement_lines (settlement_id) WHERE settlement_id IS NOT NULL;

-- A merchant's deficit from negative days not yet covered by later ones (<= 0). Its row is
-- locked by every settlement of the merchant, so a merchant's settlements run one at a time.
CREATE TABLE settlement_carry (
    merchant_id   uuid PRIMARY KEY REFERENCES merchants,
    carried_minor bigint NOT NULL DEFAULT 0 CHECK (carried_minor <= 0)
);

ALTER TABLE merchant_audit_log DROP CONSTRAINT merchant_audit_log_subject_type_check;
ALTER TABLE merchant_audit_log ADD CONSTRAINT merchant_audit_log_subject_type_check
    CHECK (subject_type IN ('MERCHANT', 'API_KEY', 'WEBHOOK_ENDPOINT', 'SETTLEMENT'));
