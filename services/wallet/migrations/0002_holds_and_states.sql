-- Holds are captured through a ledger transaction that names them; wallets record why
-- they were frozen.

ALTER TABLE ledger_transactions ADD COLUMN hold_id uuid REFERENCES wallet_holds;
ALTER TABLE wallets ADD COLUMN state_reason text NOT NULL DEFAULT '';
ALTER TABLE wallet_holds ADD COLUMN capture_transaction_id uuid REFERENCES ledger_transactions;

-- The reconciliation job and the Reconcile RPC read all wallets' entries in one snapshot.
CREATE INDEX wallet_holds_by_wallet_active ON wallet_holds (wallet_id) WHERE state = 'ACTIVE';
