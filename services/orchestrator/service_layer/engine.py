"""The saga engine: runs a saga's steps in order, persisting state before and after each
one, compensates the completed steps in reverse order after a business failure, and lets
any replica resume a saga whose runner died.

- A saga's id is derived from its reference, so starting the same saga twice is one saga.
- One runner at a time: a runner holds a lease (renewed at every move); another replica
  takes over only once the lease has expired (`claim_due`, FOR UPDATE SKIP LOCKED).
- Every step runs with its own idempotency key `<saga id>-<step>`, so a step repeated
  after a crash (it ran, but its success was never recorded) is one effect.
- Business refusals (FAILED_PRECONDITION, NOT_FOUND, ...) compensate; anything else
  (UNAVAILABLE, DEADLINE_EXCEEDED, a crash) is retried later with backoff, the same step
  again, until the faults stop.
- Secret inputs (a CVV) live only in this process's memory for the first run and are
  never written anywhere; a saga resumed elsewhere runs without them.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_status import rpc_status

from services.framework import failpoints
from services.framework.db import Database
from services.framework.errors import FailedPrecondition, NotFound, error_info
from services.orchestrator.adapters.repository import (
    LeaseLost,
    SagaRecord,
    SagaRepository,
    StepRecord,
    StepWrite,
)
from services.orchestrator.domain.saga import (
    BusinessFailure,
    SagaContext,
    SagaDefinition,
    SagaState,
    StepState,
    TransientFailure,
)

log = logging.getLogger("interpay.saga")

SAGA_NAMESPACE = uuid.UUID("2b4f7d0e-1c3a-4e55-9f1d-6a7b8c9d0e1f")
_BUSINESS_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
}


class SagaNotFound(NotFound):
    default_reason = "SAGA_NOT_FOUND"


def classify(exc: BaseException) -> BusinessFailure | TransientFailure:
    """A peer's refusal is a business failure (with the peer's ErrorInfo reason); every
    other failure is transient."""
    if isinstance(exc, BusinessFailure | TransientFailure):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _BUSINESS_CODES:
        status = rpc_status.from_call(exc)
        info = error_info(status) if status else None
        return BusinessFailure(info.reason if info else exc.code().name, exc.details() or "")
    return TransientFailure(str(exc) or type(exc).__name__)


def backoff_seconds(attempts: int) -> float:
    return float(min(30.0, 0.2 * 2 ** min(attempts, 8)))


class SagaEngine:
    def __init__(
        self,
        db: Database,
        definitions: Mapping[str, SagaDefinition],
        lease_seconds: float = 15.0,
        owner: str | None = None,
    ) -> None:
        self.db = db
        self.definitions = dict(definitions)
        self.lease_seconds = lease_seconds
        self.owner = owner or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._secrets: dict[uuid.UUID, Message] = {}

    async def start(
        self,
        saga_type: str,
        reference: str,
        reference_id: uuid.UUID,
        input_: Message,
        secret: Message | None = None,
    ) -> uuid.UUID:
        """Creates the saga (or finds it: idempotent on `reference`) and drives it as far as
        it goes now. Returns its id; read its outcome with `load`."""
        saga_id = uuid.uuid5(SAGA_NAMESPACE, reference)
        payload = input_.SerializeToString(deterministic=True)
        lease = self._lease()
        async with self.db.transaction() as conn:
            repo = SagaRepository(conn)
            created = await repo.insert(
                saga_id, saga_type, reference, reference_id, payload, lease, self.lease_seconds
            )
            existing = None if created else await repo.get(saga_id)
        if existing is not None and (existing.saga_type != saga_type or existing.input != payload):
            raise FailedPrecondition(
                f"reference {reference!r} already started a different saga",
                reason="IDEMPOTENCY_MISMATCH",
                metadata={"reference": reference, "saga_id": str(saga_id)},
            )
        if created is None:
            await self.run(saga_id)  # a repeated start: drive it only if nobody else does
            return saga_id
        # Created with this runner's lease: no other runner can hold it, and it has no
        # steps yet, so neither needs asking the database.
        if secret is not None:
            self._secrets[saga_id] = secret
        try:
            await self._drive(created, lease, steps={})
        finally:
            self._secrets.pop(saga_id, None)
        return saga_id

    async def load(self, saga_id: uuid.UUID) -> tuple[SagaRecord, list[StepRecord]]:
        async with self.db.transaction() as conn:
            repo = SagaRepository(conn)
            saga = await repo.get(saga_id)
            if saga is None:
                raise SagaNotFound(f"saga {saga_id} does not exist", metadata={"saga_id": str(saga_id)})
            return saga, await repo.steps(saga_id)

    async def run(self, saga_id: uuid.UUID) -> None:
        """Drives one saga if no other runner holds it."""
        async with self.db.transaction() as conn:
            lease = self._lease()
            saga = await SagaRepository(conn).acquire(saga_id, lease, self.lease_seconds)
        if saga is not None:
            await self._drive(saga, lease)

    async def recover(self, batch: int = 20) -> int:
        """Resumes sagas whose runner died or whose retry is due (every replica runs this)."""
        async with self.db.transaction() as conn:
            claimed = await SagaRepository(conn).claim_due(
                (lease := self._lease()), self.lease_seconds, batch, list(self.definitions)
            )
        for saga_id in claimed:
            async with self.db.transaction() as conn:
                saga = await SagaRepository(conn).get(saga_id)
            if saga is not None:
                await self._drive(saga, lease)
        return len(claimed)

    async def retry(self, saga_id: uuid.UUID) -> None:
        async with self.db.transaction() as conn:
            reopened = await SagaRepository(conn).reopen(saga_id)
        if reopened:
            await self.run(saga_id)

    # -- the runner ---------------------------------------------------------------------
    def _lease(self) -> str:
        """A token for one acquisition: two runs in this process never share a lease, so
        neither can renew the other's, and a runner that lost its lease finds out."""
        return f"{self.owner}/{uuid.uuid4().hex[:12]}"

    async def _drive(self, saga: SagaRecord, lease: str, steps: dict[int, StepRecord] | None = None) -> None:
        saga = dataclasses.replace(saga, lease=lease)
        definition = self.definitions[saga.saga_type]
        if steps is None:
            async with self.db.transaction() as conn:
                steps = {s.step_index: s for s in await SagaRepository(conn).steps(saga.saga_id)}
        ctx = SagaContext(
            saga_id=saga.saga_id,
            input=definition.input_type.FromString(saga.input),
            secret=self._secrets.get(saga.saga_id),
            results={s.name: s.result or {} for s in steps.values() if s.state is StepState.SUCCEEDED},
            failure=BusinessFailure(saga.failure_code, saga.failure_reason) if saga.failure_code else None,
            started_at=saga.created_at,
        )
        retry_in: float | None = None
        lost = released = False
        try:
            if saga.state in (SagaState.STARTED, SagaState.RUNNING):
                retry_in, released = await self._forward(saga, definition, ctx)
                if retry_in is None and ctx.failure is not None:
                    retry_in, released = await self._compensate(saga, definition, ctx, steps)
            elif saga.state is SagaState.COMPENSATING:
                retry_in, released = await self._compensate(saga, definition, ctx, steps)
        except LeaseLost:
            lost = True
            log.warning("saga lease lost; its new runner carries on", extra={"saga_id": str(saga.saga_id)})
        finally:
            if not lost and not released:
                async with self.db.transaction() as conn:
                    await SagaRepository(conn).release(saga.saga_id, saga.lease, retry_in)

    async def _write(self, saga: SagaRecord, steps: list[StepWrite], **changes: Any) -> None:
        """One move of the runner, committed on its own before anything else happens: the
        records of `steps` and the saga's own changes (state, next step, failure, lease).
        The statement and its commit are sent together (one round trip instead of two);
        the lease check comes after the commit, which wrote nothing if the lease was lost."""
        async with self.db.transaction() as conn:
            async with conn.pipeline():
                cur = await SagaRepository(conn).write(
                    saga.saga_id, saga.lease, self.lease_seconds, steps, **changes
                )
                await conn.commit()
            await SagaRepository.held(saga.saga_id, cur)

    async def _forward(
        self, saga: SagaRecord, definition: SagaDefinition, ctx: SagaContext
    ) -> tuple[float | None, bool]:
        """Runs the remaining steps; returns a retry delay if a step must be tried again
        later, and whether the lease was given up with the saga's last move.

        Moves are merged where nothing happens between them, so that a payment commits
        once per step rather than three times: the saga's move to RUNNING, the records
        of skipped steps (they do nothing; after a crash they are simply skipped again)
        and the success of a step all wait for the next step's start and are committed
        with it, before that step acts. So every step still has its start committed
        before it acts and its success committed before the next one acts, and the
        saga's last move (COMPLETED) also gives up the lease."""
        pending: list[StepWrite] = []  # records not committed yet; nothing acted since
        moves: dict[str, Any] = {"state": SagaState.RUNNING}  # the first move only
        done = len(definition.steps)  # where the saga stands at its end
        for index in range(saga.next_step, len(definition.steps)):
            step = definition.steps[index]
            key = ctx.key(step.name)
            if not step.when(ctx):
                pending.append(
                    StepWrite(index, step.name, StepState.SUCCEEDED, key, result={"skipped": True})
                )
                continue
            pending.append(StepWrite(index, step.name, StepState.RUNNING, key, attempt=True))
            await self._write(saga, pending, next_step=index, **moves)
            pending, moves = [], {}
            failpoints.hit(f"saga.{saga.saga_type}.{step.name}.before")
            try:
                result = await step.action(ctx)
                failpoints.hit(f"saga.{saga.saga_type}.{step.name}.after")  # done, not yet recorded
            except Exception as exc:
                failure = classify(exc)
                if isinstance(failure, BusinessFailure) and step.forward_only:
                    # Past the pivot money has moved for good: a refusal must not undo the
                    # saga. The step is retried with backoff until its cause is fixed, and
                    # its last error tells the operator what that cause is.
                    log.error(
                        "saga step refused past the pivot; retrying, never compensating",
                        extra={"saga_id": str(saga.saga_id), "step": step.name, "error": str(failure)},
                    )
                    failure = TransientFailure(f"refused past the pivot: {failure.reason}: {failure.message}")
                if isinstance(failure, TransientFailure):
                    await self._write(
                        saga, [StepWrite(index, step.name, StepState.RUNNING, key, error=str(failure)[:500])]
                    )
                    log.warning(
                        "saga step will be retried",
                        extra={"saga_id": str(saga.saga_id), "step": step.name, "error": str(failure)},
                    )
                    return backoff_seconds(saga.attempts), False
                ctx.failure = failure
                await self._write(
                    saga,
                    [StepWrite(index, step.name, StepState.FAILED, key, error=str(failure)[:500])],
                    state=SagaState.COMPENSATING,
                    failure_code=failure.reason,
                    failure_reason=failure.message[:500],
                )
                return None, False
            ctx.results[step.name] = result
            pending.append(StepWrite(index, step.name, StepState.SUCCEEDED, key, result=result))
            if result.get("halt"):
                done = index + 1
                break
        # The last step's success (or the skipped steps after it), the saga's completion
        # and the end of the lease: one commit.
        await self._write(
            saga,
            pending,
            next_step=done,
            state=SagaState.COMPLETED,
            release=True,
        )
        return None, True

    async def _compensate(
        self, saga: SagaRecord, definition: SagaDefinition, ctx: SagaContext, steps: dict[int, StepRecord]
    ) -> tuple[float | None, bool]:
        """Undoes the completed steps in reverse order, each compensation's start and end
        committed around it; returns a retry delay if one must be tried again later, and
        whether the lease was given up with the saga's last move."""
        async with self.db.transaction() as conn:
            steps = {s.step_index: s for s in await SagaRepository(conn).steps(saga.saga_id)}
        for index in sorted(steps, reverse=True):
            record = steps[index]
            step = definition.steps[index]
            if record.state not in (StepState.SUCCEEDED, StepState.COMPENSATING) or step.compensate is None:
                continue
            if (record.result or {}).get("skipped"):
                continue
            key = ctx.key(step.name)
            await self._write(saga, [StepWrite(index, step.name, StepState.COMPENSATING, key)])
            try:
                await step.compensate(ctx)
            except Exception as exc:
                failure = classify(exc)
                if isinstance(failure, TransientFailure):
                    await self._write(
                        saga, [StepWrite(index, step.name, StepState.COMPENSATING, key, error=str(failure))]
                    )
                    return backoff_seconds(saga.attempts), False
                # A refusal to undo means there is nothing left to undo (a hold already
                # released or expired): the compensation's goal holds.
                log.info(
                    "compensation found nothing to undo",
                    extra={"saga_id": str(saga.saga_id), "step": step.name, "reason": failure.reason},
                )
            await self._write(saga, [StepWrite(index, step.name, StepState.COMPENSATED, key)])
        if definition.on_failure is not None:
            try:
                await definition.on_failure(ctx)
            except Exception as exc:
                if isinstance(classify(exc), TransientFailure):
                    return backoff_seconds(saga.attempts), False
                log.error("failure handler refused", extra={"saga_id": str(saga.saga_id), "error": str(exc)})
        await self._write(saga, [], state=SagaState.COMPENSATED, release=True)
        return None, True
