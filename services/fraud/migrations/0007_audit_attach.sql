-- The audit trail (services/framework/audit.sql) on the fraud configuration: rules,
-- thresholds and the blacklist (beside fraud_audit_log, the service's own log of those
-- changes). Quiet: the bookkeeping that tells replicas what changed (change_version,
-- updated_at). Not attached: fraud_config (a version counter), and fraud_checks, itself
-- the record of every check (a confirmed-fraud report on a check also writes the
-- blacklist entries it causes, which the trail records).
SELECT audit_trail_attach('fraud_rules', 'rule_id', quiet => '{change_version,updated_at}');
SELECT audit_trail_attach('fraud_thresholds', 'singleton', quiet => '{change_version,updated_at}');
SELECT audit_trail_attach('blacklist', 'entry_id', quiet => '{change_version}');
