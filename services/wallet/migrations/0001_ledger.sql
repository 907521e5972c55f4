-- The wallet service's ledger: wallets, double-entry ledger transactions and their entries,
-- and holds. The ledger is append-only and every transaction sums to zero, both enforced
-- here in the database, not only in code.

CREATE TABLE wallets (
    wallet_id   uuid PRIMARY KEY,
    owner_type  text NOT NULL CHECK (owner_type IN ('USER', 'MERCHANT', 'SYSTEM')),
    owner_id    text NOT NULL,
    currency    char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    balance     bigint NOT NULL DEFAULT 0,
    available   bigint NOT NULL DEFAULT 0,
    pending     bigint NOT NULL DEFAULT 0,
    state       text NOT NULL DEFAULT 'ACTIVE' CHECK (state IN ('ACTIVE', 'FROZEN', 'CLOSED')),
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_type, owner_id, currency),
    CHECK (balance = available + pending),
    CHECK (pending >= 0),
    -- Only system accounts may go below zero: the funding account is negative by
    -- exactly the money that has entered the platform.
    CHECK (owner_type = 'SYSTEM' OR available >= 0)
);

CREATE TABLE ledger_transactions (
    transaction_id        uuid PRIMARY KEY,
    reference             text NOT NULL UNIQUE,
    kind                  text NOT NULL,
    currency              char(3) NOT NULL,
    amount                bigint NOT NULL CHECK (amount > 0),
    source_wallet_id      uuid NOT NULL REFERENCES wallets,
    destination_wallet_id uuid NOT NULL REFERENCES wallets,
    description           text NOT NULL DEFAULT '',
    created_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (source_wallet_id <> destination_wallet_id)
);

-- One row per wallet per ledger transaction: the wallet's view of the movement.
CREATE TABLE wallet_transactions (
    entry_id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id         uuid NOT NULL REFERENCES ledger_transactions,
    wallet_id              uuid NOT NULL REFERENCES wallets,
    amount                 bigint NOT NULL CHECK (amount <> 0),
    balance_after          bigint NOT NULL,
    counterparty_wallet_id uuid NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_transactions_by_wallet ON wallet_transactions (wallet_id, entry_id DESC);
CREATE INDEX wallet_transactions_by_transaction ON wallet_transactions (transaction_id);

CREATE TABLE wallet_holds (
    hold_id         uuid PRIMARY KEY,
    wallet_id       uuid NOT NULL REFERENCES wallets,
    reference       text NOT NULL UNIQUE,
    amount          bigint NOT NULL CHECK (amount > 0),
    captured_amount bigint NOT NULL DEFAULT 0 CHECK (captured_amount >= 0 AND captured_amount <= amount),
    state           text NOT NULL DEFAULT 'ACTIVE'
                    CHECK (state IN ('ACTIVE', 'CAPTURED', 'RELEASED', 'EXPIRED')),
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz
);
CREATE INDEX wallet_holds_active_expiry ON wallet_holds (expires_at) WHERE state = 'ACTIVE';

CREATE FUNCTION ledger_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER wallet_transactions_append_only BEFORE UPDATE OR DELETE ON wallet_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER wallet_transactions_no_truncate BEFORE TRUNCATE ON wallet_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_forbid_change();
CREATE TRIGGER ledger_transactions_no_truncate BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_forbid_change();

-- Checked at commit, once all entries of the transaction are written.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
BEGIN
    SELECT coalesce(sum(amount), 0) INTO total
      FROM wallet_transactions WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not sum to zero (sum %)', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER wallet_transactions_balanced
    AFTER INSERT ON wallet_transactions DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();
