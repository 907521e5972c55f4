"""The saga engine against the orchestrator's real PostgreSQL, with in-memory steps:
state is persisted around every step, a refusal compensates completed steps in reverse,
transient failures are retried, and a saga whose runner died mid-step is finished by
another runner once the lease expires, each step's effect happening once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from interpay.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.framework.db import Database
from services.orchestrator.domain.saga import (
    BusinessFailure,
    SagaContext,
    SagaDefinition,
    SagaState,
    Step,
    StepState,
    TransientFailure,
)
from services.orchestrator.service_layer.engine import SagaEngine
from tests.conftest import database_url


class Ledger:
    """Effects keyed by idempotency key, like the real peers: a repeat is one effect."""

    def __init__(self) -> None:
        self.effects: dict[str, str] = {}
        self.log: list[str] = []
        self.fail_once: set[str] = set()
        self.refuse: set[str] = set()
        self.block: dict[str, asyncio.Event] = {}

    def step(self, name: str) -> Any:
        async def action(ctx: SagaContext) -> dict[str, Any]:
            if name in self.fail_once:
                self.fail_once.discard(name)
                raise TransientFailure(f"{name}: peer unavailable")
            if name in self.refuse:
                raise BusinessFailure("INSUFFICIENT_FUNDS", f"{name} refused")
            self.effects.setdefault(ctx.key(name), name)
            self.log.append(name)
            if name in self.block:  # the effect happened; the runner hangs before recording it
                await self.block[name].wait()
            return {"done": name}

        return action

    def undo(self, name: str) -> Any:
        async def compensate(ctx: SagaContext) -> None:
            self.effects.pop(ctx.key(name), None)
            self.log.append(f"undo-{name}")

        return compensate


def definition(ledger: Ledger, saga_type: str) -> SagaDefinition:
    return SagaDefinition(
        saga_type,
        pb.TransferSagaInput,
        tuple(Step(n, ledger.step(n), compensate=ledger.undo(n)) for n in ("one", "two", "three")),
    )


@pytest.fixture
async def db(profile, mesh_secrets) -> AsyncIterator[Database]:  # type: ignore[no-untyped-def]
    database = Database(database_url(profile, mesh_secrets, "orchestrator"), None, max_size=4)
    await database.pool.open(wait=True)
    yield database
    await database.close()


def _input() -> pb.TransferSagaInput:
    return pb.TransferSagaInput(
        transfer_id=str(uuid.uuid4()),
        source_wallet_id=str(uuid.uuid4()),
        destination_wallet_id=str(uuid.uuid4()),
    )


async def test_a_saga_runs_its_steps_in_order_and_persists_them(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    engine = SagaEngine(db, {saga_type: definition(ledger, saga_type)})
    saga_id = await engine.start(saga_type, f"ref-{uuid.uuid4()}", uuid.uuid4(), _input())
    saga, steps = await engine.load(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert [(s.name, s.state) for s in steps] == [(n, StepState.SUCCEEDED) for n in ("one", "two", "three")]
    assert [s.idempotency_key for s in steps] == [f"{saga_id}-{n}" for n in ("one", "two", "three")]
    assert ledger.log == ["one", "two", "three"]


async def test_a_refusal_compensates_completed_steps_in_reverse(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    ledger.refuse.add("three")
    engine = SagaEngine(db, {saga_type: definition(ledger, saga_type)})
    saga_id = await engine.start(saga_type, f"ref-{uuid.uuid4()}", uuid.uuid4(), _input())
    saga, steps = await engine.load(saga_id)
    assert saga.state is SagaState.COMPENSATED and saga.failure_code == "INSUFFICIENT_FUNDS"
    assert ledger.log == ["one", "two", "undo-two", "undo-one"]
    assert ledger.effects == {}
    assert [s.state for s in steps] == [StepState.COMPENSATED, StepState.COMPENSATED, StepState.FAILED]


async def test_a_transient_failure_is_retried_until_the_saga_completes(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    ledger.fail_once.add("two")
    engine = SagaEngine(db, {saga_type: definition(ledger, saga_type)})
    saga_id = await engine.start(saga_type, f"ref-{uuid.uuid4()}", uuid.uuid4(), _input())
    assert (await engine.load(saga_id))[0].state is SagaState.RUNNING
    for _ in range(50):
        await engine.recover()
        if (await engine.load(saga_id))[0].state.terminal:
            break
        await asyncio.sleep(0.1)
    saga, steps = await engine.load(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert steps[1].attempts == 2 and ledger.log == ["one", "two", "three"]


async def test_starting_the_same_reference_twice_is_one_saga(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    engine = SagaEngine(db, {saga_type: definition(ledger, saga_type)})
    reference, saga_input = f"ref-{uuid.uuid4()}", _input()
    first = await engine.start(saga_type, reference, uuid.uuid4(), saga_input)
    again = await engine.start(saga_type, reference, uuid.uuid4(), saga_input)
    assert first == again and ledger.log == ["one", "two", "three"]


async def test_another_runner_finishes_a_saga_whose_runner_died(db: Database, profile, mesh_secrets) -> None:  # type: ignore[no-untyped-def]
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    ledger.block["two"] = asyncio.Event()  # runner A does step two's effect, hangs, then dies
    db_a = Database(database_url(profile, mesh_secrets, "orchestrator"), None, max_size=2)
    await db_a.pool.open(wait=True)
    dying = SagaEngine(db_a, {saga_type: definition(ledger, saga_type)}, lease_seconds=2, owner="runner-a")
    task = asyncio.ensure_future(dying.start(saga_type, f"ref-{uuid.uuid4()}", uuid.uuid4(), _input()))
    await asyncio.sleep(0.3)
    await db_a.close()  # like kill -9: the runner can write nothing more, its lease stays
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    saga_id = next(iter({uuid.UUID(k.rsplit("-", 1)[0]) for k in ledger.effects}))
    survivor = SagaEngine(db, {saga_type: definition(ledger, saga_type)}, lease_seconds=2, owner="runner-b")
    assert (await survivor.load(saga_id))[0].state is SagaState.RUNNING
    assert await survivor.recover() == 0  # A's lease is still live: nobody may take over yet

    ledger.block.pop("two").set()
    for _ in range(60):
        await survivor.recover()
        if (await survivor.load(saga_id))[0].state.terminal:
            break
        await asyncio.sleep(0.1)
    saga, steps = await survivor.load(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert ledger.log == ["one", "two", "two", "three"]  # B repeated the unrecorded step...
    assert sorted(ledger.effects.values()) == ["one", "three", "two"]  # ...with the same key: one effect
    assert steps[1].attempts == 2  # started by A, finished by B


async def test_concurrent_starts_in_one_process_run_each_step_once(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    engine = SagaEngine(db, {saga_type: definition(ledger, saga_type)})
    reference, saga_input, reference_id = f"ref-{uuid.uuid4()}", _input(), uuid.uuid4()
    ids = await asyncio.gather(
        *(engine.start(saga_type, reference, reference_id, saga_input) for _ in range(10))
    )
    assert len(set(ids)) == 1
    for _ in range(50):  # a start that found the saga busy leaves it to its runner
        if (await engine.load(ids[0]))[0].state.terminal:
            break
        await asyncio.sleep(0.05)
    assert (await engine.load(ids[0]))[0].state is SagaState.COMPLETED
    assert ledger.log == ["one", "two", "three"]  # the lease admits one runner, even in-process


async def test_a_stalled_runner_that_lost_its_lease_stops(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    ledger.block["two"] = asyncio.Event()  # runner A stalls inside step two past its lease
    slow = SagaEngine(db, {saga_type: definition(ledger, saga_type)}, lease_seconds=1, owner="slow")
    task_a = asyncio.ensure_future(slow.start(saga_type, f"ref-{uuid.uuid4()}", uuid.uuid4(), _input()))
    for _ in range(250):  # until A holds the lease and is inside step two
        if "two" in ledger.log:
            break
        await asyncio.sleep(0.02)
    other = SagaEngine(db, {saga_type: definition(ledger, saga_type)}, lease_seconds=30, owner="other")
    task_b: asyncio.Future[int] | None = None
    for _ in range(100):  # once A's lease has expired, B takes over and repeats step two
        if task_b is None or task_b.done():
            task_b = asyncio.ensure_future(other.recover())
        if ledger.log.count("two") == 2:
            break
        await asyncio.sleep(0.1)
    assert ledger.log.count("two") == 2, ledger.log
    ledger.block.pop("two").set()  # both runners wake up
    await asyncio.wait_for(asyncio.gather(task_a, task_b), 10)
    saga_id = next(iter({uuid.UUID(k.rsplit("-", 1)[0]) for k in ledger.effects}))
    saga, steps = await other.load(saga_id)
    assert saga.state is SagaState.COMPLETED
    assert ledger.log.count("three") == 1  # A found its lease gone and took no further step
    assert sorted(set(ledger.effects.values())) == ["one", "three", "two"]


async def test_a_refusal_past_the_pivot_is_retried_and_never_compensated(db: Database) -> None:
    ledger, saga_type = Ledger(), f"TEST_{uuid.uuid4().hex[:8]}"
    ledger.refuse.add("three")  # refused after money moved for good
    steps = (
        Step("one", ledger.step("one"), compensate=ledger.undo("one")),
        Step("two", ledger.step("two"), compensate=ledger.undo("two")),
        Step("three", ledger.step("three"), forward_only=True),
    )
    engine = SagaEngine(db, {saga_type: SagaDefinition(saga_type, pb.TransferSagaInput, steps)})
    saga_id = await engine.start(saga_type, f"ref-{uuid.uuid4()}", uuid.uuid4(), _input())
    saga, records = await engine.load(saga_id)
    assert saga.state is SagaState.RUNNING and saga.failure_code == ""  # waiting to retry, not undoing
    assert records[2].state is StepState.RUNNING and "refused past the pivot" in (records[2].last_error)
    assert "undo-one" not in ledger.log and "undo-two" not in ledger.log
    ledger.refuse.discard("three")  # the cause is fixed: the retry goes through
    for _ in range(50):
        await engine.recover()
        if (await engine.load(saga_id))[0].state.terminal:
            break
        await asyncio.sleep(0.1)
    assert (await engine.load(saga_id))[0].state is SagaState.COMPLETED
    assert ledger.log == ["one", "two", "three"]
