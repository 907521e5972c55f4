-- The audit trail (services/framework/audit.sql) on cards and data keys, beside the
-- vault's own audit_log of what it did (tokenise, detokenise, rotate). Omitted: every
-- byte of key material and ciphertext (wrapped keys, nonces, ciphertexts), so the trail
-- and its Kafka copy hold only what already leaves the vault (token, brand, last4,
-- expiry, keyed fingerprint, key versions and states).
SELECT audit_trail_attach('cards', 'token', omit => '{nonce,ciphertext}');
SELECT audit_trail_attach('data_keys', 'version', omit => '{wrapped_key}');
