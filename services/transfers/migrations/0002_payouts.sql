-- Transfers and payouts run as orchestrator sagas (the payments issue). The saga reports
-- each outcome through RecordTransferOutcome / RecordPayoutOutcome, idempotent on the
-- orchestrator's reference; the details of a refusal (the peer's ErrorInfo metadata) are
-- kept so a retried create call can answer with the same error as the first.

ALTER TABLE transfers ADD COLUMN failure_metadata jsonb;

CREATE TABLE payouts (
    payout_id             uuid PRIMARY KEY,
    source_wallet_id      uuid NOT NULL,
    -- interpay.transfers.v1.ExternalAccount, deterministic encoding: compared on retries
    destination           bytea NOT NULL,
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    state                 text NOT NULL DEFAULT 'PENDING'
                          CHECK (state IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    failure_code          text,
    failure_reason        text,
    failure_message       text,
    failure_metadata      jsonb,
    rail_reference        text,
    ledger_transaction_id uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (state <> 'FAILED' OR failure_reason IS NOT NULL),
    CHECK (state <> 'PROCESSING' OR (rail_reference IS NOT NULL AND ledger_transaction_id IS NOT NULL))
);
CREATE INDEX payouts_by_source ON payouts (source_wallet_id, created_at DESC);

-- One row per outcome the orchestrator recorded: a repeated call with the same reference
-- returns the first result; the same reference with another request is refused.
CREATE TABLE outcome_references (
    reference    text PRIMARY KEY,
    subject_id   uuid NOT NULL,
    request_hash bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
