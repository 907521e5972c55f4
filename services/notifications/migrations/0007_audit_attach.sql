-- The audit trail (services/framework/audit.sql) on notifications and webhook deliveries.
-- Omitted: the message texts and the webhook bodies (what was said is in the rows
-- themselves; the trail records who changed a delivery, e.g. a manual redelivery, and
-- how its state moved). Quiet: the sender's scheduling (next attempt, round bookkeeping).
-- Not attached: webhook_attempts (append-only, itself the delivery log), and the
-- consumers' bookkeeping (processed_events, wallet_owners, payment_parties,
-- pending_refund_events), projections of other services' audited events.
SELECT audit_trail_attach('notifications', 'notification_id', quiet => '{updated_at}',
                          omit => '{title,body,masked_recipient}');
SELECT audit_trail_attach('webhook_deliveries', 'delivery_id',
                          quiet => '{next_attempt_at,updated_at}', omit => '{body}');
