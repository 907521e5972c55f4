-- What may be shown of a card payment's card (brand, last4, expiry: a serialised
-- interpay.payments.v1.CardSummary), read from the vault when the payment is created.
ALTER TABLE payments ADD COLUMN card_summary bytea;
