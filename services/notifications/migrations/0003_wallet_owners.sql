-- Which user owns which wallet, learnt from the wallet events (WalletCreated), so a transfer
-- event (which names wallets) can be told to the users whose wallets it moved.

CREATE TABLE wallet_owners (
    wallet_id uuid PRIMARY KEY,
    user_id   uuid NOT NULL
);
