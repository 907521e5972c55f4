-- Sagas and their steps. State is written before and after every step, so any replica
-- can resume a saga whose runner died: it takes the lease once it has expired.

CREATE TABLE sagas (
    saga_id          uuid PRIMARY KEY,
    saga_type        text NOT NULL,
    reference        text NOT NULL UNIQUE,
    reference_id     uuid NOT NULL,
    input            bytea NOT NULL,
    state            text NOT NULL DEFAULT 'STARTED'
                     CHECK (state IN ('STARTED', 'RUNNING', 'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'FAILED')),
    failure_reason   text NOT NULL DEFAULT '',
    failure_code     text NOT NULL DEFAULT '',
    next_step        integer NOT NULL DEFAULT 0,
    attempts         integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sagas_due ON sagas (next_attempt_at) WHERE state IN ('STARTED', 'RUNNING', 'COMPENSATING');
CREATE INDEX sagas_by_reference_id ON sagas (reference_id, created_at DESC);
CREATE INDEX sagas_by_state ON sagas (state, created_at DESC);

CREATE TABLE saga_steps (
    saga_id         uuid NOT NULL REFERENCES sagas,
    step_index      integer NOT NULL,
    name            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'COMPENSATING', 'COMPENSATED')),
    attempts        integer NOT NULL DEFAULT 0,
    idempotency_key text NOT NULL,
    last_error      text NOT NULL DEFAULT '',
    result          jsonb,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step_index)
);
