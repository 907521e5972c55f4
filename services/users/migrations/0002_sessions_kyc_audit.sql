-- Sessions with rotating refresh tokens, KYC review rules, erasure, and the audit log.

-- Email and phone are unique among users that are not ERASED: erasure empties them and
-- gives them back. (Email first, as in 0001, so a clash on both names the email.)
DROP INDEX users_email_unique;
DROP INDEX users_phone_unique;
CREATE UNIQUE INDEX users_email_unique ON users (lower(email)) WHERE state <> 'ERASED';
CREATE UNIQUE INDEX users_phone_unique ON users (phone) WHERE state <> 'ERASED';

-- Erasure empties the country; char(2) would pad '' to two spaces.
ALTER TABLE user_profiles ALTER COLUMN country_code TYPE text USING rtrim(country_code);
ALTER TABLE user_profiles ADD CONSTRAINT user_profiles_country_code CHECK (country_code ~ '^([A-Z]{2})?$');

-- A session is one login: its refresh tokens form one family. Each refresh rotates the
-- token (the old one is marked rotated, a new one issued); presenting a rotated token
-- again is reuse, which revokes the whole session. Only SHA-256 hashes of the tokens
-- (256 random bits each) are stored.
ALTER TABLE refresh_sessions
    ADD COLUMN ip_address      text NOT NULL DEFAULT '',
    ADD COLUMN user_agent      text NOT NULL DEFAULT '',
    ADD COLUMN last_refresh_at timestamptz,
    ADD COLUMN revoked_reason  text
        CHECK (revoked_reason IN ('LOGOUT', 'REVOKE_ALL', 'TOKEN_REUSE', 'USER_DELETED'));

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES refresh_sessions ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
INSERT INTO refresh_tokens (token_hash, session_id, created_at)
    SELECT token_hash, session_id, created_at FROM refresh_sessions;
ALTER TABLE refresh_sessions DROP COLUMN token_hash;
CREATE INDEX refresh_sessions_by_user_all ON refresh_sessions (user_id, created_at DESC);

-- A user has at most one PENDING document of each type.
ALTER TABLE kyc_documents ADD CONSTRAINT kyc_documents_type
    CHECK (document_type IN ('PASSPORT', 'NATIONAL_ID', 'DRIVING_LICENCE', 'PROOF_OF_ADDRESS'));
CREATE UNIQUE INDEX kyc_documents_one_pending_per_type
    ON kyc_documents (user_id, document_type) WHERE state = 'PENDING';
ALTER TABLE kyc_documents ADD COLUMN reviewed_by text;

-- The audit log: one row per state change, written in the same transaction as the
-- change. Generic on purpose (resource type and id, the data subject, JSON before and
-- after), so the framework can give every service the same table.
CREATE TABLE audit_log (
    audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,          -- 'user:<id>', 'anonymous', 'service:<name>'
    action        text NOT NULL,          -- '<resource>.<past-tense verb>', e.g. 'user.deleted'
    resource_type text NOT NULL,
    resource_id   text NOT NULL,
    subject_id    text,                   -- the person whose data the row holds (GDPR subject)
    source_ip     inet,
    trace_id      text NOT NULL DEFAULT '',
    before        jsonb,                  -- never secrets: no password hash, no token
    after         jsonb,
    details       jsonb NOT NULL DEFAULT '{}'::jsonb,
    redacted_at   timestamptz             -- set when erasure removed the subject's personal data
);
CREATE INDEX audit_log_by_resource ON audit_log (resource_type, resource_id, audit_id);
CREATE INDEX audit_log_by_subject ON audit_log (subject_id, audit_id) WHERE subject_id IS NOT NULL;

-- Append-only, with one exception: erasure may redact a row's before/after and source
-- address (and must say so in redacted_at); who did what, when, stays.
CREATE FUNCTION audit_log_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.redacted_at IS NOT NULL
       AND (NEW.audit_id, NEW.occurred_at, NEW.actor, NEW.action, NEW.resource_type,
            NEW.resource_id, NEW.subject_id, NEW.trace_id, NEW.details)
           IS NOT DISTINCT FROM
           (OLD.audit_id, OLD.occurred_at, OLD.actor, OLD.action, OLD.resource_type,
            OLD.resource_id, OLD.subject_id, OLD.trace_id, OLD.details) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_guard();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_guard();
