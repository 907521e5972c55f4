-- The audit trail (services/framework/audit.sql) on transfers and payouts. Omitted: the
-- payout's destination (the external account, bank details that must not travel to Kafka
-- and Cassandra) and the client context (an opaque blob; the trail has the caller's
-- address anyway).
SELECT audit_trail_attach('transfers', 'transfer_id', quiet => '{updated_at}', omit => '{client_context}');
SELECT audit_trail_attach('payouts', 'payout_id', quiet => '{updated_at}',
                          omit => '{destination,client_context}');
