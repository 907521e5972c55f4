-- The audit trail (services/framework/audit.sql) on users, profiles and KYC documents,
-- beside the service's audit_log of what it did (with before/after images that erasure
-- can redact). The trail travels to Kafka and Cassandra, which erasure cannot reach, so
-- it omits every personal datum: email, phone, display name, country, the KYC document's
-- reference; and the password hash. It keeps what changed state: status, KYC level,
-- versions, document types and review outcomes.
SELECT audit_trail_attach('users', 'user_id', quiet => '{updated_at}',
                          omit => '{email,phone,password_hash}');
SELECT audit_trail_attach('user_profiles', 'user_id', quiet => '{updated_at}',
                          omit => '{display_name,country_code}');
SELECT audit_trail_attach('kyc_documents', 'document_id', omit => '{document_reference}');
