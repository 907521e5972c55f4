"""The transfers service's domain events, written to its outbox (services/framework/outbox.py)
in the transaction that records the change (adapters/repository.py).

Every version of a transfer or payout row is exactly one event: created (version 1),
then one per change of state. Transfers are on topic `interpay.events.v1.transfer`,
payouts on `interpay.events.v1.payout`, each keyed by the record's id (the client's), so
one record's events share a partition in version order; `aggregate_version` = the row's
version, the payload the contract's `interpay.transfers.v1.Transfer` / `Payout` as it
stands after the change.

| event_type (interpay.transfers.v1.…) | the record became |
|---|---|
| TransferCreated | a transfer, PENDING (version 1, written with its creation) |
| TransferCompleted, TransferFailed | COMPLETED, FAILED (the saga's outcome) |
| PayoutCreated | a payout, PENDING (version 1) |
| PayoutProcessing | PROCESSING: the rail took it, the funds are in payout clearing |
| PayoutCompleted, PayoutFailed | COMPLETED, FAILED |

A request that is refused (another's or an unknown source wallet, the same id with a
different request, an outcome the record cannot take) or that replays one already made
changes nothing and writes no event. Keeping a refusal's details for later retries of
the create call (not part of the contract's message) is no new version either.

The payout's destination is masked in its events: the contract's `ExternalAccount`
carries the IBAN or domestic account number whole (GetPayout answers it so to the
payout's owner), but an event reaches every consumer of the topic, so only the IBAN's
country code and last four characters, and the account number's last four, travel
(`DE****************3000`); the holder's name, the routing number and the country stay.
"""

from __future__ import annotations

from interpay.transfers.v1 import transfers_service_pb2 as pb

from services.framework.outbox import Event, Outbox
from services.transfers.domain.model import Payout, Transfer, masked

OUTBOX = Outbox("transfers")
TRANSFER = "transfer"
PAYOUT = "payout"
_PREFIX = "interpay.transfers.v1."

TRANSFER_EVENTS = {"PENDING": "TransferCreated", "COMPLETED": "TransferCompleted", "FAILED": "TransferFailed"}
PAYOUT_EVENTS = {
    "PENDING": "PayoutCreated",
    "PROCESSING": "PayoutProcessing",
    "COMPLETED": "PayoutCompleted",
    "FAILED": "PayoutFailed",
}


def masked_account(account: pb.ExternalAccount) -> pb.ExternalAccount:
    """The account as events show it: the IBAN (country code and last four kept) or the
    domestic account number (last four kept) masked."""
    shown = pb.ExternalAccount()
    shown.CopyFrom(account)
    if account.HasField("iban"):
        shown.iban = masked(account.iban, keep_start=2)
    elif account.HasField("domestic_account"):
        shown.domestic_account.account_number = masked(account.domestic_account.account_number)
    return shown


def transfer_event(transfer: Transfer) -> Event:
    from services.transfers.entrypoints.grpc_api import transfer_pb  # the contract's message

    return Event(
        TRANSFER,
        str(transfer.transfer_id),
        transfer.version,
        transfer_pb(transfer),
        _PREFIX + TRANSFER_EVENTS[transfer.state],
    )


def payout_event(payout: Payout) -> Event:
    from services.transfers.entrypoints.grpc_api import payout_pb

    message = payout_pb(payout)
    message.destination.CopyFrom(masked_account(message.destination))
    return Event(
        PAYOUT, str(payout.payout_id), payout.version, message, _PREFIX + PAYOUT_EVENTS[payout.state]
    )
