-- The merchants service: merchants, their API keys (hashes of the secrets only), their
-- webhook endpoints (signing secrets encrypted), the Idempotency-Key records of its
-- create calls, and an append-only audit log of every change. Settlements arrive with
-- the payments issue, when there is something to settle.

CREATE TABLE merchants (
    merchant_id          uuid PRIMARY KEY,
    legal_name           text NOT NULL CHECK (length(legal_name) BETWEEN 1 AND 200),
    display_name         text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    contact_email        text NOT NULL CHECK (length(contact_email) BETWEEN 3 AND 254),
    country_code         char(2) NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
    settlement_currency  char(3) NOT NULL CHECK (settlement_currency ~ '^[A-Z]{3}$'),
    -- Set once, after the wallet service opened the wallet; NULL only while onboarding.
    settlement_wallet_id uuid UNIQUE,
    -- {"holder_name", "country_code", and "iban" or "account_number" + "routing_number"}
    payout_account       jsonb NOT NULL,
    fee_bps              integer NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    state                text NOT NULL DEFAULT 'PENDING'
                         CHECK (state IN ('PENDING', 'ACTIVE', 'SUSPENDED')),
    suspend_reason       text NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- A merchant takes payments only into a wallet that exists.
    CHECK (state = 'PENDING' OR settlement_wallet_id IS NOT NULL),
    CHECK ((state = 'SUSPENDED') = (suspend_reason <> ''))
);
CREATE INDEX merchants_by_creation ON merchants (created_at, merchant_id);
CREATE INDEX merchants_by_state ON merchants (state, created_at, merchant_id);
-- The repair job's work list: merchants whose wallet call failed midway.
CREATE INDEX merchants_without_wallet ON merchants (created_at) WHERE settlement_wallet_id IS NULL;

CREATE TABLE merchant_api_keys (
    key_id                uuid PRIMARY KEY,
    merchant_id           uuid NOT NULL REFERENCES merchants,
    public_id             text NOT NULL UNIQUE CHECK (public_id ~ '^ipk_[0-9a-f]{24}$'),
    -- SHA-256 of the secret; the secret itself is never stored.
    secret_hash           bytea NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes                text[] NOT NULL CHECK (
                              cardinality(scopes) >= 1
                              AND scopes <@ ARRAY['PAYMENTS_READ', 'PAYMENTS_WRITE', 'REFUNDS_WRITE',
                                                  'REPORTS_READ', 'WEBHOOKS_WRITE']::text[]),
    rate_limit_per_minute integer NOT NULL CHECK (rate_limit_per_minute BETWEEN 1 AND 100000),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    -- The key that replaced this one in a rotation; a key is rotated at most once.
    replaced_by_key_id    uuid UNIQUE REFERENCES merchant_api_keys,
    last_used_at          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (replaced_by_key_id <> key_id)
);
CREATE INDEX merchant_api_keys_by_merchant ON merchant_api_keys (merchant_id, created_at DESC, key_id DESC);

CREATE TABLE webhook_endpoints (
    endpoint_id        uuid PRIMARY KEY,
    merchant_id        uuid NOT NULL REFERENCES merchants,
    url                text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    event_types        text[] NOT NULL CHECK (cardinality(event_types) BETWEEN 1 AND 100),
    description        text NOT NULL DEFAULT '' CHECK (length(description) <= 256),
    -- AES-256-GCM (nonce || ciphertext || tag) of the signing secret, bound to the
    -- endpoint id, under the key whose fingerprint is secret_key_id. Wiped on delete.
    signing_secret     bytea,
    secret_key_id      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    deleted_at         timestamptz,
    CHECK ((deleted_at IS NULL) = (signing_secret IS NOT NULL AND secret_key_id IS NOT NULL))
);
CREATE INDEX webhook_endpoints_by_merchant ON webhook_endpoints (merchant_id, created_at, endpoint_id)
    WHERE deleted_at IS NULL;

-- A create call's Idempotency-Key and what it created: a retry under the same key finds
-- the row (or waits on its unique index while the first call commits) and replays.
CREATE TABLE idempotency_keys (
    rpc             text NOT NULL,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash    bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    resource_id     uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rpc, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Every change to a merchant, its keys and its endpoints, written in the change's own
-- transaction. Append-only, as compliance expects.
CREATE TABLE merchant_audit_log (
    audit_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  uuid NOT NULL REFERENCES merchants,
    subject_type text NOT NULL CHECK (subject_type IN ('MERCHANT', 'API_KEY', 'WEBHOOK_ENDPOINT')),
    subject_id   uuid NOT NULL,
    action       text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merchant_audit_log_by_merchant ON merchant_audit_log (merchant_id, audit_id);

CREATE FUNCTION merchant_audit_log_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER merchant_audit_log_append_only BEFORE UPDATE OR DELETE ON merchant_audit_log
    FOR EACH ROW EXECUTE FUNCTION merchant_audit_log_forbid_change();
CREATE TRIGGER merchant_audit_log_no_truncate BEFORE TRUNCATE ON merchant_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION merchant_audit_log_forbid_change();
