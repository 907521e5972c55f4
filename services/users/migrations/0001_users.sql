-- Identity: credentials (users), personal data (user_profiles, separate so it can be
-- exported and erased on its own), KYC records, and refresh sessions.

CREATE TABLE users (
    user_id       uuid PRIMARY KEY,
    email         text NOT NULL,
    phone         text NOT NULL,
    password_hash text NOT NULL,
    state         text NOT NULL DEFAULT 'ACTIVE'
                  CHECK (state IN ('ACTIVE', 'SUSPENDED', 'DELETED', 'ERASED')),
    kyc_level     integer NOT NULL DEFAULT 0 CHECK (kyc_level BETWEEN 0 AND 3),
    version       bigint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique case-insensitively.
CREATE UNIQUE INDEX users_email_unique ON users (lower(email));
CREATE UNIQUE INDEX users_phone_unique ON users (phone);

CREATE TABLE user_profiles (
    user_id            uuid PRIMARY KEY REFERENCES users,
    display_name       text NOT NULL,
    country_code       char(2) NOT NULL,
    preferred_language text NOT NULL DEFAULT 'en',
    version            bigint NOT NULL DEFAULT 1,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kyc_documents (
    document_id        uuid PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users,
    document_type      text NOT NULL,
    document_reference text NOT NULL,
    issuing_country    char(2) NOT NULL,
    state              text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'VERIFIED', 'REJECTED')),
    rejection_reason   text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    reviewed_at        timestamptz
);
CREATE INDEX kyc_documents_by_user ON kyc_documents (user_id, created_at DESC);

-- Refresh sessions: only a hash of the refresh token is stored.
CREATE TABLE refresh_sessions (
    session_id  uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX refresh_sessions_by_user ON refresh_sessions (user_id) WHERE revoked_at IS NULL;
