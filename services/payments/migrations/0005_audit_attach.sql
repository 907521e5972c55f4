-- The audit trail (services/framework/audit.sql) on every table of state. Not on
-- payment_transactions: it is itself the payments' append-only history. Omitted: the
-- opaque protobuf blobs (client context, fraud assessment, card summary) and the
-- request digests; the trail keeps every column a person would read.
SELECT audit_trail_attach('payments', 'payment_id', quiet => '{updated_at}',
                          omit => '{client_context,fraud_assessment,card_summary,request_hash}');
SELECT audit_trail_attach('refunds', 'refund_id', quiet => '{updated_at}', omit => '{request_hash}');
SELECT audit_trail_attach('payment_methods', 'payment_method_id');
