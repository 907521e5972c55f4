-- The audit trail (services/framework/audit.sql) on sagas and their steps. Quiet: the
-- lease and retry bookkeeping a runner rewrites while it works (a change of those alone
-- is not a state change). Omitted: the saga's input, an opaque protobuf blob.
SELECT audit_trail_attach('sagas', 'saga_id',
                          quiet => '{lease_owner,lease_expires_at,attempts,next_attempt_at,updated_at}',
                          omit => '{input}');
-- A step's id is its saga and index: the trail names it '<saga id>' and the image holds
-- the index.
SELECT audit_trail_attach('saga_steps', 'saga_id', quiet => '{attempts,updated_at}');
