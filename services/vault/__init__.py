"""The vault service: the only place a card number lives (see README.md)."""
