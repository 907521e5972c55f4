"""The vault service's composition root: wires the key hierarchy, the database and the
background re-encryption into the use cases and the servicer."""

from __future__ import annotations

from pathlib import Path

from services.framework import metrics
from services.framework.config import ServiceConfig, integer, require
from services.framework.db import Database
from services.framework.outbox import Relay
from services.framework.periodic import Periodic
from services.framework.server import run
from services.vault.adapters import log_redaction
from services.vault.adapters.crypto import KeyEncryptionKey
from services.vault.entrypoints.grpc_api import VaultServicer
from services.vault.service_layer.keyring import KeyRing
from services.vault.service_layer.vault import Vault

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(config: ServiceConfig) -> tuple[object, list[object]]:
    log_redaction.install()
    kek = KeyEncryptionKey.from_file(require("INTERPAY_VAULT_KEK_FILE"))
    batch = integer("INTERPAY_VAULT_REENCRYPT_BATCH", 200)
    retain_seconds = float(integer("INTERPAY_VAULT_KEY_RETENTION_SECONDS", 7 * 24 * 3600))
    db = Database(config.database_url, MIGRATIONS, max_size=config.db_pool_max, audited=True)
    keyring = KeyRing(db, kek)
    vault = Vault(db, kek, keyring)
    pending = {"cards": 0.0}

    async def maintain() -> None:
        pending["cards"] = (await vault.maintain(batch, retain_seconds)).cards_pending_reencryption

    metrics.register_gauge(
        "interpay_vault_cards_pending_reencryption",
        "Cards still encrypted under a data key version other than the active one, at the last sweep",
        [],
        lambda: [([], pending["cards"])],
    )
    metrics.register_gauge(
        "interpay_vault_active_key_version",
        "The data key version that encrypts new cards",
        [],
        lambda: [([], float(keyring.active_version))],
    )
    sweep = Periodic(
        "reencrypt-cards", float(integer("INTERPAY_VAULT_REENCRYPT_INTERVAL_SECONDS", 5)), maintain
    )
    # Started in order: migrations and pool, then the data keys, then the sweep.
    # The audit trail of cards and keys, published to Kafka by the relay (framework/audit.py).
    relay = Relay(db, "vault")
    return VaultServicer(vault), [db, keyring, sweep, relay]


def main() -> None:
    run("vault", build)  # type: ignore[arg-type]
