-- The fraud service's tables: its rules, blacklist and thresholds (the configuration every
-- replica caches), every check it made and an audit log of every configuration change.

-- One counter for the whole configuration. Every transaction that changes a rule, the
-- blacklist or the thresholds first increments it (taking its row lock until commit), and
-- stamps the rows it writes with the new value in `change_version`. So versions commit
-- in order, and a replica that has loaded version V can fetch exactly the changes it has
-- not seen with `change_version > V`.
CREATE TABLE fraud_config (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO fraud_config (version) VALUES (1);

CREATE TABLE fraud_thresholds (
    singleton                 boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    review_threshold          integer NOT NULL CHECK (review_threshold BETWEEN 1 AND 10000),
    decline_threshold         integer NOT NULL CHECK (decline_threshold BETWEEN 1 AND 10000),
    degraded_minimum_decision text NOT NULL CHECK (degraded_minimum_decision IN ('APPROVE', 'REVIEW')),
    version                   bigint NOT NULL DEFAULT 1,
    change_version            bigint NOT NULL DEFAULT 1,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CHECK (review_threshold <= decline_threshold)
);
INSERT INTO fraud_thresholds (review_threshold, decline_threshold, degraded_minimum_decision)
VALUES (5000, 8000, 'APPROVE');

CREATE TABLE fraud_rules (
    rule_id        uuid PRIMARY KEY,
    name           text NOT NULL CHECK (name <> '' AND length(name) <= 128),
    description    text NOT NULL DEFAULT '' CHECK (length(description) <= 1024),
    rule_type      text NOT NULL CHECK (rule_type IN ('VELOCITY', 'AMOUNT', 'LOCATION',
                       'IMPOSSIBLE_TRAVEL', 'DEVICE', 'BLACKLIST', 'PATTERN', 'KYC_LIMIT')),
    weight         integer NOT NULL CHECK (weight BETWEEN 0 AND 10000),
    state          text NOT NULL DEFAULT 'ENABLED' CHECK (state IN ('ENABLED', 'DISABLED')),
    -- The parameters of the rule's type, as the service's own JSON (see adapters/repository.py).
    parameters     jsonb NOT NULL,
    version        bigint NOT NULL DEFAULT 1,
    change_version bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fraud_rules_listing ON fraud_rules (created_at, rule_id);

-- The promise of ReportFraud ("the next attempt with either is declined") needs a
-- BLACKLIST rule, so the platform starts with one matching every entry type at full
-- weight. Operators may change or disable it like any other rule.
INSERT INTO fraud_rules (rule_id, name, description, rule_type, weight, parameters, change_version)
VALUES ('0b1ac4e1-5700-4a3e-9f6e-000000000001', 'Blacklisted identifiers',
        'Declines any transaction carrying a blacklisted user, e-mail domain, device, IP address, '
        'IP range or card.', 'BLACKLIST', 10000,
        '{"entry_types": ["USER", "EMAIL_DOMAIN", "DEVICE", "IP", "IP_RANGE", "CARD_FINGERPRINT"]}', 1);

CREATE TABLE blacklist (
    entry_id       uuid PRIMARY KEY,
    entry_type     text NOT NULL CHECK (entry_type IN ('USER', 'EMAIL_DOMAIN', 'DEVICE', 'IP',
                       'IP_RANGE', 'CARD_FINGERPRINT')),
    -- Normalised (lower-case domain, canonical address or network), so equal values match.
    value          text NOT NULL,
    reason         text NOT NULL,
    source         text NOT NULL CHECK (source IN ('MANUAL', 'FRAUD_REPORT')),
    payment_id     uuid,
    expires_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Removal is soft, so replicas loading changes incrementally see it.
    removed_at     timestamptz,
    change_version bigint NOT NULL,
    CHECK ((source = 'FRAUD_REPORT') = (payment_id IS NOT NULL))
);
CREATE UNIQUE INDEX blacklist_one_active_value ON blacklist (entry_type, value) WHERE removed_at IS NULL;
CREATE INDEX blacklist_changes ON blacklist (change_version);
CREATE INDEX blacklist_listing ON blacklist (created_at DESC, entry_id DESC) WHERE removed_at IS NULL;

CREATE TABLE fraud_checks (
    check_id             uuid PRIMARY KEY,
    reference            text NOT NULL UNIQUE,
    -- sha256 of the request's deterministic encoding: a retry must match it exactly.
    request_hash         bytea NOT NULL,
    transaction_kind     text NOT NULL CHECK (transaction_kind IN ('PAYMENT', 'TRANSFER', 'PAYOUT')),
    transaction_id       uuid NOT NULL,
    user_id              uuid,
    merchant_id          uuid,
    counterparty_user_id uuid,
    amount               bigint NOT NULL CHECK (amount > 0),
    currency             char(3) NOT NULL,
    payment_method_kind  text NOT NULL CHECK (payment_method_kind IN ('WALLET', 'CARD', 'BANK_ACCOUNT')),
    card_fingerprint     text NOT NULL DEFAULT '',
    device_fingerprint   text NOT NULL DEFAULT '',
    ip_address           text NOT NULL DEFAULT '',
    country_code         text NOT NULL DEFAULT '',
    latitude             double precision,
    longitude            double precision,
    -- The payer's e-mail is kept only as its domain and a sha256 of the address.
    email_domain         text NOT NULL DEFAULT '',
    email_sha256         text NOT NULL DEFAULT '',
    kyc_level            integer NOT NULL,
    occurred_at          timestamptz NOT NULL,
    risk_score           integer NOT NULL CHECK (risk_score BETWEEN 0 AND 10000),
    decision             text NOT NULL CHECK (decision IN ('APPROVE', 'REVIEW', 'DECLINE')),
    fired_rules          jsonb NOT NULL,
    degraded             boolean NOT NULL,
    review_threshold     integer NOT NULL,
    decline_threshold    integer NOT NULL,
    config_version       bigint NOT NULL,
    -- Time spent deciding: from the handler's start until just before the INSERT of this row.
    latency_us           integer NOT NULL,
    confirmed_fraud      boolean NOT NULL DEFAULT false,
    report_reason        text NOT NULL DEFAULT '',
    reported_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (confirmed_fraud = (reported_at IS NOT NULL))
);
CREATE INDEX fraud_checks_newest ON fraud_checks (created_at DESC, check_id DESC);
CREATE INDEX fraud_checks_by_user ON fraud_checks (user_id, created_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX fraud_checks_by_merchant ON fraud_checks (merchant_id, created_at DESC)
    WHERE merchant_id IS NOT NULL;
CREATE INDEX fraud_checks_by_transaction ON fraud_checks (transaction_id, created_at DESC);

-- Every configuration change and fraud report, for compliance. Append-only.
CREATE TABLE fraud_audit_log (
    audit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action      text NOT NULL,
    target_type text NOT NULL,
    target_id   text NOT NULL,
    -- Who did it; empty until callers are authenticated (edge auth issue).
    actor       text NOT NULL DEFAULT '',
    details     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fraud_audit_log_by_target ON fraud_audit_log (target_type, target_id, audit_id);

CREATE FUNCTION fraud_audit_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER fraud_audit_log_append_only BEFORE UPDATE OR DELETE ON fraud_audit_log
    FOR EACH ROW EXECUTE FUNCTION fraud_audit_forbid_change();
CREATE TRIGGER fraud_audit_log_no_truncate BEFORE TRUNCATE ON fraud_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION fraud_audit_forbid_change();
