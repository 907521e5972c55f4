-- The audit trail (services/framework/audit.py). A service copies this file as a
-- migration and then attaches the trail to each table whose rows are state, e.g.
--
--     SELECT audit_trail_attach('payments', 'payment_id', quiet => '{updated_at}',
--                               omit => '{fraud_assessment}');
--
-- From then on PostgreSQL itself records every INSERT, UPDATE and DELETE of those rows,
-- in the same transaction: who (the actor and the peer service the framework sets for the
-- transaction), what (table, operation, the row's id), before and after (the row's images
-- as JSON, without the columns it omits), when, and from where (client address and
-- user agent, trace id). Nothing in a use case can forget to audit, and nothing can
-- change a row without its record.
--
-- The trail is append-only. Its one mutable column, `published_at`, is how it doubles as
-- its own outbox: the service's relay publishes unpublished rows to Kafka
-- (interpay.events.v1.audit, for the analytics copy in Cassandra) and then sets it.

CREATE TABLE audit_trail (
    audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    table_name    text NOT NULL,
    operation     text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    entity_id     text NOT NULL,
    actor         text NOT NULL,          -- 'user:<id>', 'merchant:<id>', 'operator:<name>', 'service:<name>', 'system:<service>'
    via           text NOT NULL DEFAULT '', -- the peer service that made the call, if any
    source_ip     inet,
    user_agent    text NOT NULL DEFAULT '',
    trace_id      text NOT NULL DEFAULT '',
    before        jsonb,                  -- NULL for an INSERT
    after         jsonb,                  -- NULL for a DELETE
    published_at  timestamptz             -- set once Kafka acknowledged the copy
);
CREATE INDEX audit_trail_by_entity ON audit_trail (table_name, entity_id, audit_id);
CREATE INDEX audit_trail_unpublished ON audit_trail (audit_id) WHERE published_at IS NULL;

-- Append-only: only published_at may be set, once; no DELETE, no TRUNCATE.
CREATE FUNCTION audit_trail_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.published_at IS NULL AND NEW.published_at IS NOT NULL
       AND (to_jsonb(NEW) - 'published_at') = (to_jsonb(OLD) - 'published_at') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_trail_append_only BEFORE UPDATE OR DELETE ON audit_trail
    FOR EACH ROW EXECUTE FUNCTION audit_trail_guard();
CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
    FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_guard();

-- The row trigger. Arguments: the id column, the quiet columns (an UPDATE that changes
-- only these is not recorded: another append-only record already holds it, e.g. a
-- wallet's balance and its ledger entries), and the omitted columns (never copied:
-- secrets, ciphertexts and opaque blobs).
-- Who and from where come from the transaction's settings (`SET LOCAL interpay.*`),
-- which the framework sets for every transaction made on behalf of a call; work of
-- the service's own jobs is 'system:<database role>'.
CREATE FUNCTION audit_trail_record() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    id_column text := TG_ARGV[0];
    quiet     text[] := TG_ARGV[1]::text[];
    omit      text[] := TG_ARGV[2]::text[];
    old_image jsonb;
    new_image jsonb;
    address   text := nullif(current_setting('interpay.source_ip', true), '');
BEGIN
    IF TG_OP <> 'INSERT' THEN old_image := to_jsonb(OLD) - omit; END IF;
    IF TG_OP <> 'DELETE' THEN new_image := to_jsonb(NEW) - omit; END IF;
    IF TG_OP = 'UPDATE' AND (old_image - quiet) = (new_image - quiet) THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit_trail (table_name, operation, entity_id, actor, via, source_ip,
                             user_agent, trace_id, before, after)
    VALUES (TG_TABLE_NAME, TG_OP, coalesce(new_image, old_image) ->> id_column,
            coalesce(nullif(current_setting('interpay.actor', true), ''), 'system:' || current_user),
            coalesce(current_setting('interpay.via', true), ''),
            address::inet,
            coalesce(current_setting('interpay.user_agent', true), ''),
            coalesce(current_setting('interpay.trace_id', true), ''),
            old_image, new_image);
    RETURN NULL;
END $$;

-- Attaches the trail to a table (idempotent: a later migration may call it again with
-- other columns).
CREATE FUNCTION audit_trail_attach(
    target regclass, id_column text, quiet text[] DEFAULT '{}', omit text[] DEFAULT '{}'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    name text := 'audit_trail_' || replace(target::text, '.', '_');
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', name, target);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
        'EXECUTE FUNCTION audit_trail_record(%L, %L, %L)',
        name, target, id_column, quiet::text, omit::text);
END $$;
