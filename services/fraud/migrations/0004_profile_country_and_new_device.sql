-- Two weak signals of account takeover, added to the default rule set (README, "Default
-- rules"):
-- - a transaction from another country than the paying user's profile country (a
--   LOCATION rule with `fire_on_profile_country_mismatch` and no listed countries);
-- - the first transaction of a user from a device (a DEVICE rule with
--   `fire_on_new_device_for_user`, no limit on distinct users, a 30-day memory).
-- Each alone stays far under REVIEW (5000), and both together too (3500): they only tip a
-- transaction into REVIEW beside a real signal. Neither fires without its inputs: the
-- first needs a user, a transaction country and a profile country; the second a user and
-- a device fingerprint.

-- When a user last used a device (the new-device rule's question, asked in the check's
-- first query): an index-only scan for max(occurred_at). Declined checks do not count as
-- having used the device; a check's decision never changes after it is recorded.
CREATE INDEX fraud_checks_user_devices ON fraud_checks (user_id, device_fingerprint, occurred_at)
    WHERE user_id IS NOT NULL AND device_fingerprint <> '' AND decision <> 'DECLINE';

UPDATE fraud_config SET version = version + 1;

INSERT INTO fraud_rules (rule_id, name, description, rule_type, weight, parameters, change_version)
SELECT r.rule_id::uuid, r.name, r.description, r.rule_type, r.weight, r.parameters::jsonb, c.version
FROM fraud_config c, (VALUES
    ('0b1ac4e1-5700-4a3e-9f6e-00000000000d', 'Country differs from the profile',
     'A transaction from another country than the one in the paying user''s profile '
     '(users service). The card''s issuing country is not known to the platform.',
     'LOCATION', 2000,
     '{"country_codes": [], "fire_on_profile_country_mismatch": true}'),
    ('0b1ac4e1-5700-4a3e-9f6e-00000000000e', 'New device for the user',
     'The first transaction of a user from a device within 30 days (declined attempts do '
     'not count as use).',
     'DEVICE', 1500,
     '{"max_users_per_device": 0, "window_ms": 2592000000, "fire_on_missing_fingerprint": false, '
     '"fire_on_new_device_for_user": true}')
) AS r (rule_id, name, description, rule_type, weight, parameters);
