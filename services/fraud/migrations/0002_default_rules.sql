-- The default rule set of a fresh platform, beside the blacklist rule of 0001. Weights
-- and limits are chosen so that an ordinary payment (a few per hour, amounts well under
-- 1 000.00, from a device and place the user keeps) fires nothing and is APPROVED, one
-- strong signal alone reaches REVIEW (5000) at most when its limit is far exceeded, and
-- DECLINE (8000) needs the blacklist or several signals together. Operators change them
-- at run time through the admin RPCs; ids are fixed so documentation can name them.
--
-- Parameters are in the service's JSON form (adapters/repository.py): durations in
-- milliseconds, money in minor units with its ISO-4217 currency.
UPDATE fraud_config SET version = version + 1;

INSERT INTO fraud_rules (rule_id, name, description, rule_type, weight, parameters, change_version)
SELECT r.rule_id::uuid, r.name, r.description, r.rule_type, r.weight, r.parameters::jsonb, c.version
FROM fraud_config c, (VALUES
    ('0b1ac4e1-5700-4a3e-9f6e-000000000002', 'User velocity, hourly',
     'More than 10 transactions from one user within an hour.',
     'VELOCITY', 6000,
     '{"subject": "USER", "window_ms": 3600000, "max_count": 10, "max_amount": null}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000003', 'User velocity, daily',
     'More than 50 transactions from one user within a day.',
     'VELOCITY', 6000,
     '{"subject": "USER", "window_ms": 86400000, "max_count": 50, "max_amount": null}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000004', 'Card velocity, hourly',
     'More than 10 transactions with one card within an hour.',
     'VELOCITY', 6000,
     '{"subject": "CARD_FINGERPRINT", "window_ms": 3600000, "max_count": 10, "max_amount": null}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000005', 'Card testing',
     'A burst of attempts with one card: more than 5 within 10 minutes, the signature of '
     'testing stolen card numbers with small authorisations.',
     'VELOCITY', 7000,
     '{"subject": "CARD_FINGERPRINT", "window_ms": 600000, "max_count": 5, "max_amount": null}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000006', 'Device velocity, hourly',
     'More than 20 transactions from one device within an hour.',
     'VELOCITY', 5000,
     '{"subject": "DEVICE", "window_ms": 3600000, "max_count": 20, "max_amount": null}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000007', 'IP velocity, hourly',
     'More than 30 transactions from one IP address within an hour.',
     'VELOCITY', 5000,
     '{"subject": "IP_ADDRESS", "window_ms": 3600000, "max_count": 30, "max_amount": null}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000008', 'Large amount',
     'A single transaction of 10 000.00 or more in EUR, USD or GBP.',
     'AMOUNT', 5000,
     '{"thresholds": [{"amount_minor": 1000000, "currency": "EUR"}, '
     '{"amount_minor": 1000000, "currency": "USD"}, {"amount_minor": 1000000, "currency": "GBP"}]}'),
    ('0b1ac4e1-5700-4a3e-9f6e-000000000009', 'Impossible travel',
     'Two transactions of one user from places further apart than an airliner covers in '
     'the time between them (900 km/h; distances under 300 km are ignored).',
     'IMPOSSIBLE_TRAVEL', 7000,
     '{"max_speed_kmh": 900, "min_distance_km": 300, "lookback_ms": 86400000}'),
    ('0b1ac4e1-5700-4a3e-9f6e-00000000000a', 'Shared device',
     'One device used by more than 5 users within a day.',
     'DEVICE', 5000,
     '{"max_users_per_device": 5, "window_ms": 86400000, "fire_on_missing_fingerprint": false}'),
    ('0b1ac4e1-5700-4a3e-9f6e-00000000000b', 'Unusual amount for the user',
     'An amount 4 or more standard deviations above the user''s own mean over 90 days, '
     'judged once the user has 10 transactions in that currency.',
     'PATTERN', 4000,
     '{"lookback_ms": 7776000000, "min_history_count": 10, "z_score_threshold": 4.0}'),
    ('0b1ac4e1-5700-4a3e-9f6e-00000000000c', 'KYC level limits',
     'Amounts above what the user''s KYC level allows (level from the users service).',
     'KYC_LIMIT', 6000,
     '{"limits": ['
     '{"kyc_level": 0, "max_single": {"amount_minor": 100000, "currency": "EUR"}, "max_daily": {"amount_minor": 300000, "currency": "EUR"}}, '
     '{"kyc_level": 0, "max_single": {"amount_minor": 100000, "currency": "USD"}, "max_daily": {"amount_minor": 300000, "currency": "USD"}}, '
     '{"kyc_level": 0, "max_single": {"amount_minor": 100000, "currency": "GBP"}, "max_daily": {"amount_minor": 300000, "currency": "GBP"}}, '
     '{"kyc_level": 1, "max_single": {"amount_minor": 1000000, "currency": "EUR"}, "max_daily": {"amount_minor": 5000000, "currency": "EUR"}}, '
     '{"kyc_level": 1, "max_single": {"amount_minor": 1000000, "currency": "USD"}, "max_daily": {"amount_minor": 5000000, "currency": "USD"}}, '
     '{"kyc_level": 1, "max_single": {"amount_minor": 1000000, "currency": "GBP"}, "max_daily": {"amount_minor": 5000000, "currency": "GBP"}}, '
     '{"kyc_level": 2, "max_single": {"amount_minor": 10000000, "currency": "EUR"}, "max_daily": null}, '
     '{"kyc_level": 2, "max_single": {"amount_minor": 10000000, "currency": "USD"}, "max_daily": null}, '
     '{"kyc_level": 2, "max_single": {"amount_minor": 10000000, "currency": "GBP"}, "max_daily": null}'
     ']}')
) AS r (rule_id, name, description, rule_type, weight, parameters);
