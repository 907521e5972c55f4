-- Every transfer and payout counts its versions, as the contract shows them: 1 when it is
-- created, one more with each change of state. Each version is exactly one event in the
-- outbox (0004; services/transfers/adapters/events.py), whose aggregate_version it is, so
-- a consumer can order a record's events and see that none is missing. Keeping the
-- details of a refusal (failure_message, failure_metadata: not part of the contract's
-- message) is no new version. Rows older than this migration start at 1 whatever their
-- state; their later changes continue from there.

ALTER TABLE transfers ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version > 0);
ALTER TABLE payouts ADD COLUMN version bigint NOT NULL DEFAULT 1 CHECK (version > 0);
