-- The audit trail (services/framework/audit.sql) on wallets and holds. Quiet: a wallet's
-- amounts and version, which every movement changes and whose every change is already
-- recorded, append-only, by the ledger (ledger_transactions and wallet_transactions, not
-- attached: they cannot change). So the trail holds a wallet's life (opened, frozen,
-- unfrozen, closed, with the reason) and each hold's (placed, captured, released,
-- expired), with who did it and from where.
SELECT audit_trail_attach('wallets', 'wallet_id',
                          quiet => '{balance,available,pending,version,updated_at}');
SELECT audit_trail_attach('wallet_holds', 'hold_id');
