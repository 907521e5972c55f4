-- A user's device and IP, derived at the edge (services/framework/edge_context.py) when
-- they asked for the transfer or payout: interpay.payments.v1.ClientContext, deterministic
-- encoding; NULL for an operator's or a service's. Kept as first given, so every start of
-- the saga (the client's retries, the resume job) sends the orchestrator the same input.
ALTER TABLE transfers ADD COLUMN client_context bytea;
ALTER TABLE payouts ADD COLUMN client_context bytea;
