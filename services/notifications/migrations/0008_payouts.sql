-- Payout events (interpay.events.v1.payout) name the wallet paid out from; its owner is
-- learnt from the wallet's WalletCreated on another topic, and the two topics are not
-- ordered with each other. wallet_owners now remembers every wallet whose creation was
-- consumed, with user_id NULL when no user owns it (a merchant's or a system wallet), so
-- "not known yet" (wait) differs from "no user to tell" (nothing to do).
ALTER TABLE wallet_owners ALTER COLUMN user_id DROP NOT NULL;

-- A payout event read before its wallet's creation waits here (processed, in the sense of
-- processed_events: its effect is to wait) and is applied, in arrival order, in the
-- transaction that learns the wallet. Both run under one advisory lock per wallet, so a
-- payout event never waits for a wallet already learnt.
CREATE TABLE pending_payout_events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    wallet_id   uuid NOT NULL,
    envelope    bytea NOT NULL,            -- the serialized interpay.events.v1.EventEnvelope
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_payout_events_by_wallet ON pending_payout_events (wallet_id, position);
