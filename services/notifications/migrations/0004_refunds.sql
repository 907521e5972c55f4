-- Refund events (interpay.events.v1.refund) name a payment, not its payer or merchant. Who
-- they are is learnt from the payment's own events (any of them carries both), kept here,
-- as wallet_owners keeps the owners of wallets.
CREATE TABLE payment_parties (
    payment_id    uuid PRIMARY KEY,
    merchant_id   uuid NOT NULL,
    payer_user_id uuid,                    -- NULL: the payment names no user
    label         text NOT NULL DEFAULT '' -- the payment's description (else merchant reference)
);

-- The refund and payment topics are not ordered with each other: a refund event read before
-- any event of its payment waits here (it is processed, in the sense of processed_events:
-- its effect is to wait), and is applied, in arrival order, in the transaction that learns
-- its payment's parties. Both run under one advisory lock per payment, so a refund event
-- never waits for a payment already learnt.
CREATE TABLE pending_refund_events (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    payment_id  uuid NOT NULL,
    envelope    bytea NOT NULL,            -- the serialized interpay.events.v1.EventEnvelope
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_refund_events_by_payment ON pending_refund_events (payment_id, position);
