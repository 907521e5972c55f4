"""The transfer and payout sagas' steps against the real wallet, fraud and transfers
services: every step run twice — as when an orchestrator dies after a step's effect and
before its record, and another replica runs the step again — is one effect; a rejected
payout's hold is released once; a rail that forgot a payout (a restarted orchestrator)
gives the same answer for it.

The transfer or payout each saga works on is inserted PENDING straight into the transfers
database, as CreateTransfer / CreatePayout do before they start the saga.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from interpay.common.v1.money_pb2 import Money
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub
from interpay.orchestrator.v1 import orchestrator_service_pb2 as pb
from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb
from interpay.transfers.v1.transfers_service_pb2_grpc import TransfersServiceStub
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from services.framework.db import Database
from services.orchestrator.adapters.payout_rail import SimulatedPayoutRail
from services.orchestrator.domain.saga import BusinessFailure, SagaContext, TransientFailure
from services.orchestrator.service_layer.engine import classify
from services.orchestrator.service_layer.transfer_sagas import TransferSagas
from tests.conftest import database_url
from tests.e2e.test_slice_http import fund, open_wallet
from tests.helpers import rpc_details, service_aio_channel

PAID = "DE89370400440532013000"
REJECTED = "DE62370400440532013001"
LATE = "DE35370400440532013002"


@pytest.fixture
async def transfers_db(profile, mesh_secrets) -> AsyncIterator[Database]:  # type: ignore[no-untyped-def]
    database = Database(database_url(profile, mesh_secrets, "transfers"), None, max_size=2)
    await database.pool.open(wait=True)
    yield database
    await database.close()


@pytest.fixture
async def peers(profile) -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:  # type: ignore[no-untyped-def]
    """Channels to the saga's peers, as the orchestrator (their internal RPCs admit it)."""
    channels: dict[str, grpc.aio.Channel] = {}

    def get(service: str) -> grpc.aio.Channel:
        if service not in channels:
            channels[service] = service_aio_channel(profile, service, "orchestrator")
        return channels[service]

    yield get
    for ch in channels.values():
        await ch.close()


def sagas(peers: Callable[[str], grpc.aio.Channel], rail: SimulatedPayoutRail | None = None) -> TransferSagas:
    return TransferSagas(
        transfers=TransfersServiceStub(peers("transfers")),
        wallet=WalletServiceStub(peers("wallet")),
        fraud=FraudServiceStub(peers("fraud")),
        rail=rail or SimulatedPayoutRail(timeout_seconds=0.05, settle_after_seconds=0.3),
    )


def context(saga_input: Any) -> SagaContext:
    return SagaContext(saga_id=uuid.uuid4(), input=saga_input, secret=None, started_at=datetime.now(UTC))


def amounts(gateway: httpx.Client, wallet_id: str) -> tuple[int, int, int]:
    w = gateway.get(f"/v1/wallets/{wallet_id}").json()["wallet"]
    return tuple(int(w[k]["amountMinor"]) for k in ("balance", "available", "pending"))  # type: ignore[return-value]


def entries(gateway: httpx.Client, wallet_id: str) -> list[str]:
    listed = gateway.get(f"/v1/wallets/{wallet_id}/transactions").json()["transactions"]
    return [f"{t['kind']} {t['amount']['amountMinor']}" for t in listed]


async def pending_payout(db: Database, source: str, iban: str, amount: int) -> pb.PayoutSagaInput:
    destination = transfers_pb.ExternalAccount(holder_name="Ada", iban=iban, country_code="DE")
    payout_id = str(uuid.uuid4())
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO payouts (payout_id, source_wallet_id, destination, amount, currency) "
            "VALUES (%s, %s, %s, %s, 'EUR')",
            (payout_id, source, destination.SerializeToString(deterministic=True), amount),
        )
    return pb.PayoutSagaInput(
        payout_id=payout_id,
        source_wallet_id=source,
        destination=destination,
        amount=Money(amount_minor=amount, currency="EUR"),
    )


async def pending_transfer(db: Database, source: str, destination: str, amount: int) -> pb.TransferSagaInput:
    transfer_id = str(uuid.uuid4())
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO transfers (transfer_id, source_wallet_id, destination_wallet_id, amount, currency) "
            "VALUES (%s, %s, %s, %s, 'EUR')",
            (transfer_id, source, destination, amount),
        )
    return pb.TransferSagaInput(
        transfer_id=transfer_id,
        source_wallet_id=source,
        destination_wallet_id=destination,
        amount=Money(amount_minor=amount, currency="EUR"),
    )


async def run_twice(ctx: SagaContext, step: Any) -> dict[str, Any]:
    first = await step.action(ctx)
    again = await step.action(ctx)
    assert again == first, f"step {step.name} answered differently when repeated"
    ctx.results[step.name] = first
    return first  # type: ignore[no-any-return]


async def test_every_transfer_step_repeated_moves_the_money_once(
    gateway: httpx.Client, peers: Callable[[str], grpc.aio.Channel], transfers_db: Database
) -> None:
    a = open_wallet(gateway, str(uuid.uuid4()))["walletId"]
    b = open_wallet(gateway, str(uuid.uuid4()))["walletId"]
    fund(gateway, a, 5_000)
    definition = sagas(peers).definitions()["TRANSFER"]
    ctx = context(await pending_transfer(transfers_db, a, b, 1_200))
    for step in definition.steps:
        await run_twice(ctx, step)
    assert amounts(gateway, a) == (3_800, 3_800, 0) and amounts(gateway, b) == (1_200, 1_200, 0)
    reply = await TransfersServiceStub(peers("transfers")).GetTransfer(
        transfers_pb.GetTransferRequest(transfer_id=ctx.input.transfer_id)
    )
    assert reply.transfer.state == transfers_pb.Transfer.STATE_COMPLETED
    assert reply.transfer.ledger_transaction_id == ctx.results["transfer"]["transaction_id"]


async def test_every_payout_step_repeated_pays_out_once(
    gateway: httpx.Client, peers: Callable[[str], grpc.aio.Channel], transfers_db: Database
) -> None:
    source = open_wallet(gateway, str(uuid.uuid4()))["walletId"]
    fund(gateway, source, 10_000)
    definition = sagas(peers).definitions()["PAYOUT"]
    ctx = context(await pending_payout(transfers_db, source, PAID, 2_500))
    for step in definition.steps:
        await run_twice(ctx, step)
    assert amounts(gateway, source) == (7_500, 7_500, 0)
    assert entries(gateway, source) == ["TRANSACTION_KIND_CAPTURE -2500", "TRANSACTION_KIND_FUNDING 10000"]
    reply = await TransfersServiceStub(peers("transfers")).GetPayout(
        transfers_pb.GetPayoutRequest(payout_id=ctx.input.payout_id)
    )
    assert reply.payout.state == transfers_pb.Payout.STATE_COMPLETED
    assert reply.payout.rail_reference == ctx.results["rail"]["rail_reference"]
    assert reply.payout.ledger_transaction_id == ctx.results["capture"]["transaction_id"]


async def test_a_rejected_payout_releases_its_hold_once_and_records_failed(
    gateway: httpx.Client, peers: Callable[[str], grpc.aio.Channel], transfers_db: Database
) -> None:
    source = open_wallet(gateway, str(uuid.uuid4()))["walletId"]
    fund(gateway, source, 10_000)
    definition = sagas(peers).definitions()["PAYOUT"]
    ctx = context(await pending_payout(transfers_db, source, REJECTED, 4_000))
    steps = {s.name: s for s in definition.steps}
    for name in ("parties", "fraud", "hold"):
        await run_twice(ctx, steps[name])
    assert amounts(gateway, source) == (10_000, 6_000, 4_000)
    with pytest.raises(BusinessFailure) as refused:
        await steps["rail"].action(ctx)
    assert refused.value.reason == "AC04"
    ctx.failure = refused.value
    for _ in range(2):
        await steps["hold"].compensate(ctx)  # type: ignore[misc]
        await definition.on_failure(ctx)  # type: ignore[misc]
    assert amounts(gateway, source) == (10_000, 10_000, 0)
    payout = (
        await TransfersServiceStub(peers("transfers")).GetPayout(
            transfers_pb.GetPayoutRequest(payout_id=ctx.input.payout_id)
        )
    ).payout
    assert payout.state == transfers_pb.Payout.STATE_FAILED and payout.failure_reason == "AC04"


async def test_a_late_payout_is_looked_up_by_reference_even_after_the_rail_forgot_it(
    peers: Callable[[str], grpc.aio.Channel],
) -> None:
    saga_input = pb.PayoutSagaInput(
        payout_id=str(uuid.uuid4()),
        source_wallet_id=str(uuid.uuid4()),
        destination=transfers_pb.ExternalAccount(holder_name="Ada", iban=LATE, country_code="DE"),
        amount=Money(amount_minor=100, currency="EUR"),
    )
    ctx = context(saga_input)
    first = sagas(peers).definitions()["PAYOUT"]
    rail_step = next(s for s in first.steps if s.name == "rail")
    with pytest.raises(TransientFailure):  # the send went unanswered
        await rail_step.action(ctx)
    accepted = await rail_step.action(ctx)  # asked again by reference: the rail took it
    assert accepted["status"] == "ACCEPTED"
    # A restarted orchestrator's rail client knows nothing: it sends again under the same
    # reference, goes unanswered, then finds the same payout.
    restarted = sagas(peers).definitions()["PAYOUT"]
    rail_step = next(s for s in restarted.steps if s.name == "rail")
    with pytest.raises(TransientFailure):
        await rail_step.action(ctx)
    assert (await rail_step.action(ctx))["rail_reference"] == accepted["rail_reference"]


async def test_recording_an_outcome_is_idempotent_on_its_reference(
    peers: Callable[[str], grpc.aio.Channel], transfers_db: Database
) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    saga_input = await pending_transfer(transfers_db, a, b, 100)
    stub = TransfersServiceStub(peers("transfers"))
    ledger_transaction_id = str(uuid.uuid4())
    completed = transfers_pb.RecordTransferOutcomeRequest(
        transfer_id=saga_input.transfer_id,
        state=transfers_pb.Transfer.STATE_COMPLETED,
        reference=f"test-{uuid.uuid4()}",
        ledger_transaction_id=ledger_transaction_id,
    )
    first = (await stub.RecordTransferOutcome(completed)).transfer
    assert (await stub.RecordTransferOutcome(completed)).transfer == first
    assert first.state == transfers_pb.Transfer.STATE_COMPLETED
    assert first.ledger_transaction_id == ledger_transaction_id

    reused = transfers_pb.RecordTransferOutcomeRequest()
    reused.CopyFrom(completed)
    reused.ledger_transaction_id = str(uuid.uuid4())
    failed = transfers_pb.RecordTransferOutcomeRequest(
        transfer_id=saga_input.transfer_id,
        state=transfers_pb.Transfer.STATE_FAILED,
        reference=f"test-{uuid.uuid4()}",
        failure_reason="INSUFFICIENT_FUNDS",
    )
    for request, reason in ((reused, "IDEMPOTENCY_MISMATCH"), (failed, "INVALID_STATE")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RecordTransferOutcome(request)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        info, _ = rpc_details(refused.value)
        assert info is not None and info.reason == reason
    got = await stub.GetTransfer(transfers_pb.GetTransferRequest(transfer_id=saga_input.transfer_id))
    assert got.transfer == first


async def test_a_refusal_past_the_pivot_is_retried_never_compensated(
    peers: Callable[[str], grpc.aio.Channel], transfers_db: Database
) -> None:
    saga_input = await pending_transfer(transfers_db, str(uuid.uuid4()), str(uuid.uuid4()), 100)
    await TransfersServiceStub(peers("transfers")).RecordTransferOutcome(
        transfers_pb.RecordTransferOutcomeRequest(
            transfer_id=saga_input.transfer_id,
            state=transfers_pb.Transfer.STATE_FAILED,
            reference=f"test-{uuid.uuid4()}",
            failure_reason="INSUFFICIENT_FUNDS",
        )
    )
    ctx = context(saga_input)
    ctx.results["transfer"] = {"transaction_id": str(uuid.uuid4())}
    recorded = next(s for s in sagas(peers).definitions()["TRANSFER"].steps if s.name == "recorded")
    # The transfers service refuses (INVALID_STATE), but the money has moved: the step is
    # declared past the pivot, so the engine retries it instead of compensating (the engine
    # side is tested in test_orchestrator_engine.py).
    assert recorded.forward_only
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await recorded.action(ctx)
    failure = classify(refused.value)
    assert isinstance(failure, BusinessFailure) and failure.reason == "INVALID_STATE"
