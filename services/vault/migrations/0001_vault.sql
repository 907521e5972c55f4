-- The vault: data key versions (stored only wrapped by the key-encryption key), card
-- ciphertexts, TokenizeCard's idempotency keys, and the audit log. No column ever holds
-- a card number, a CVV, a cardholder name or key material in clear.

CREATE TABLE data_keys (
    version        integer PRIMARY KEY CHECK (version >= 1),
    state          text NOT NULL CHECK (state IN ('ACTIVE', 'DECRYPT_ONLY', 'RETIRED')),
    -- nonce || AES-256-GCM(KEK, DEK, associated data = version); erased when RETIRED.
    wrapped_key    bytea CHECK (octet_length(wrapped_key) = 12 + 32 + 16),
    kek_id         text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deactivated_at timestamptz,
    destroyed_at   timestamptz,
    CHECK ((state = 'ACTIVE') = (deactivated_at IS NULL)),
    CHECK ((state = 'RETIRED') = (wrapped_key IS NULL)),
    CHECK ((state = 'RETIRED') = (destroyed_at IS NOT NULL))
);
-- Exactly one version encrypts new cards.
CREATE UNIQUE INDEX data_keys_one_active ON data_keys ((true)) WHERE state = 'ACTIVE';

CREATE TABLE cards (
    token        uuid PRIMARY KEY,
    brand        text CHECK (brand IN ('VISA', 'MASTERCARD', 'AMEX', 'DISCOVER', 'JCB',
                                       'DINERS_CLUB', 'UNIONPAY', 'OTHER')),
    last4        char(4) CHECK (last4 ~ '^[0-9]{4}$'),
    expiry_month smallint CHECK (expiry_month BETWEEN 1 AND 12),
    expiry_year  smallint CHECK (expiry_year BETWEEN 2000 AND 2099),
    fingerprint  char(64) CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    dek_version  integer REFERENCES data_keys (version),
    nonce        bytea CHECK (octet_length(nonce) = 12),
    -- AES-256-GCM(DEK, the card's number, expiry and name; associated data = token).
    ciphertext   bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    encrypted_at timestamptz,
    deleted_at   timestamptz,
    -- A live card has all of its data; a deleted (crypto-shredded) card keeps only its
    -- token and dates, so the token is never reissued and a second delete succeeds.
    CHECK (CASE WHEN deleted_at IS NULL
                THEN num_nulls(brand, last4, expiry_month, expiry_year, fingerprint,
                               dek_version, nonce, ciphertext, encrypted_at) = 0
                ELSE num_nonnulls(brand, last4, expiry_month, expiry_year, fingerprint,
                                  dek_version, nonce, ciphertext, encrypted_at) = 0 END)
);
-- Key status counts and the re-encryption sweep find cards by key version.
CREATE INDEX cards_by_key_version ON cards (dek_version) WHERE dek_version IS NOT NULL;

CREATE FUNCTION cards_deleted_for_good() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'card % was deleted and cannot be changed', OLD.token
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER cards_deleted_for_good BEFORE UPDATE ON cards
    FOR EACH ROW WHEN (OLD.deleted_at IS NOT NULL) EXECUTE FUNCTION cards_deleted_for_good();

-- TokenizeCard's Idempotency-Key: a retry with the same key and the same card replays
-- the first token. The digest is an HMAC under a key derived from the KEK, never the
-- card number. Kept for a day.
CREATE TABLE tokenize_requests (
    idempotency_key text PRIMARY KEY CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_digest  char(64) NOT NULL CHECK (request_digest ~ '^[0-9a-f]{64}$'),
    -- Deferred: the key is claimed first, so a concurrent retry waits on it before any
    -- card is written, and the card follows in the same transaction.
    token           uuid NOT NULL REFERENCES cards DEFERRABLE INITIALLY DEFERRED,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tokenize_requests_by_age ON tokenize_requests (created_at);

-- Every state change and every detokenisation, written in the same transaction as what
-- it records. Append-only.
CREATE TABLE audit_log (
    audit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action      text NOT NULL CHECK (action IN ('CARD_TOKENIZED', 'CARD_DETOKENIZED', 'CARD_DELETED',
                                                'DATA_KEY_CREATED', 'DATA_KEY_ROTATED',
                                                'DATA_KEY_RETIRED')),
    token       uuid,
    payment_id  uuid,
    key_version integer,
    caller      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_by_token ON audit_log (token, audit_id) WHERE token IS NOT NULL;

CREATE FUNCTION audit_log_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_forbid_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_forbid_change();
