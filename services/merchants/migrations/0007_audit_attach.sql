-- The audit trail (services/framework/audit.sql) on the merchants' own state, beside the
-- service's merchant_audit_log of what it did. Omitted everywhere: secrets (API key
-- hashes, webhook signing secrets) and the payout bank details, which must not travel to
-- Kafka and Cassandra. Quiet: a key's last-used time, rewritten on every call.
-- Not attached: settlement_lines, payment_refund_totals, merchant_metric_minutes and
-- analytics_outbox, projections of the payments service's events (audited there).
SELECT audit_trail_attach('merchants', 'merchant_id', quiet => '{updated_at}', omit => '{payout_account}');
SELECT audit_trail_attach('merchant_api_keys', 'key_id', quiet => '{last_used_at}', omit => '{secret_hash}');
SELECT audit_trail_attach('webhook_endpoints', 'endpoint_id', omit => '{signing_secret}');
SELECT audit_trail_attach('merchant_settlements', 'settlement_id', quiet => '{updated_at}',
                          omit => '{payout_account}');
SELECT audit_trail_attach('settlement_carry', 'merchant_id');
