"""SQL for sagas and steps, including the leases that let any replica resume a saga."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.types.json import Jsonb

from services.orchestrator.domain.saga import SagaState, StepState

_SAGA_COLUMNS = (
    "saga_id, saga_type, reference, reference_id, input, state, "
    "failure_reason, failure_code, next_step, attempts, created_at, updated_at"
)


class LeaseLost(Exception):
    """Another runner holds the saga now; this one must not take another step."""

    def __init__(self, saga_id: uuid.UUID) -> None:
        super().__init__(f"the lease on saga {saga_id} was taken over")


@dataclass(frozen=True)
class SagaRecord:
    saga_id: uuid.UUID
    saga_type: str
    reference: str
    reference_id: uuid.UUID
    input: bytes
    state: SagaState
    failure_reason: str
    failure_code: str
    next_step: int
    attempts: int
    created_at: datetime
    updated_at: datetime
    lease: str = ""  # the runner's lease token, once a runner holds the saga


@dataclass(frozen=True)
class StepWrite:
    """What the runner records about one step in a move (`SagaRepository.write`)."""

    index: int
    name: str
    state: StepState
    key: str
    result: dict[str, Any] | None = None
    error: str | None = None
    attempt: bool = False  # this record starts another attempt of the step


@dataclass(frozen=True)
class StepRecord:
    step_index: int
    name: str
    state: StepState
    attempts: int
    idempotency_key: str
    last_error: str
    result: dict[str, Any] | None
    started_at: datetime
    updated_at: datetime


def _saga(row: dict[str, Any]) -> SagaRecord:
    return SagaRecord(**{**row, "input": bytes(row["input"]), "state": SagaState(row["state"])})


class SagaRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def insert(
        self,
        saga_id: uuid.UUID,
        saga_type: str,
        reference: str,
        reference_id: uuid.UUID,
        input_: bytes,
        owner: str,
        lease_seconds: float,
    ) -> SagaRecord | None:
        """Creates the saga with its first runner's lease already taken (one statement
        instead of an insert and an `acquire`): between the two, the recovery job could
        claim a saga nobody holds yet and its starter would answer "in progress". None if
        the reference already has its saga."""
        cur = await self.conn.execute(
            "INSERT INTO sagas (saga_id, saga_type, reference, reference_id, input, lease_owner, "
            "lease_expires_at, attempts) VALUES (%s, %s, %s, %s, %s, %s, "
            "now() + %s * interval '1 second', 1) "
            f"ON CONFLICT (reference) DO NOTHING RETURNING {_SAGA_COLUMNS}",
            (saga_id, saga_type, reference, reference_id, input_, owner, lease_seconds),
        )
        row = await cur.fetchone()
        return _saga(row) if row else None

    async def get(
        self, saga_id: uuid.UUID | None = None, *, reference: str | None = None
    ) -> SagaRecord | None:
        where = "saga_id = %s" if saga_id is not None else "reference = %s"
        cur = await self.conn.execute(
            f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE {where}",
            (saga_id if saga_id is not None else reference,),
        )
        row = await cur.fetchone()
        return _saga(row) if row else None

    async def steps(self, saga_id: uuid.UUID) -> list[StepRecord]:
        cur = await self.conn.execute(
            "SELECT step_index, name, state, attempts, idempotency_key, last_error, result, "
            "started_at, updated_at FROM saga_steps WHERE saga_id = %s ORDER BY step_index",
            (saga_id,),
        )
        return [StepRecord(**{**r, "state": StepState(r["state"])}) for r in await cur.fetchall()]

    async def acquire(self, saga_id: uuid.UUID, owner: str, lease_seconds: float) -> SagaRecord | None:
        """Takes the saga's lease if nobody holds a live one; None if somebody does."""
        cur = await self.conn.execute(
            f"UPDATE sagas SET lease_owner = %s, lease_expires_at = now() + %s * interval '1 second', "
            f"attempts = attempts + 1, updated_at = now() "
            f"WHERE saga_id = %s AND state IN ('STARTED', 'RUNNING', 'COMPENSATING') "
            f"AND (lease_owner IS NULL OR lease_expires_at < now()) "
            f"RETURNING {_SAGA_COLUMNS}",
            (owner, lease_seconds, saga_id),
        )
        row = await cur.fetchone()
        return _saga(row) if row else None

    async def claim_due(
        self, owner: str, lease_seconds: float, limit: int, saga_types: list[str]
    ) -> list[uuid.UUID]:
        """Sagas in flight whose runner is gone (lease expired) or whose retry is due, of
        the types this runner knows; SKIP LOCKED lets replicas claim different batches."""
        cur = await self.conn.execute(
            "UPDATE sagas SET lease_owner = %s, lease_expires_at = now() + %s * interval '1 second', "
            "attempts = attempts + 1, updated_at = now() WHERE saga_id IN ("
            "  SELECT saga_id FROM sagas WHERE state IN ('STARTED', 'RUNNING', 'COMPENSATING') "
            "  AND saga_type = ANY(%s) AND next_attempt_at <= now() "
            "  AND (lease_owner IS NULL OR lease_expires_at < now()) "
            "  ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING saga_id",
            (owner, lease_seconds, saga_types, limit),
        )
        return [r["saga_id"] for r in await cur.fetchall()]

    async def write(
        self,
        saga_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        steps: Sequence[StepWrite] = (),
        *,
        state: SagaState | None = None,
        next_step: int | None = None,
        failure_code: str | None = None,
        failure_reason: str | None = None,
        release: bool = False,
    ) -> AsyncCursor[Any]:
        """One move of the runner, in one statement: the steps' records and the saga's row
        (its state, where it goes next, and its lease, renewed or, with `release`, given
        up because the saga is done). The statement is the unit the engine commits, so a
        step's success and the next step's start are durable together or not at all.

        Every move renews the lease, and writes only under it: the step records are
        inserted from the saga row the statement moved, so a runner whose lease was taken
        over (it stalled past its expiry) writes nothing. It learns so from `held` on the
        returned cursor, which the engine reads after the commit: the statement and its
        commit go out together in one round trip (libpq's pipeline mode)."""
        params: dict[str, Any] = {
            "saga_id": saga_id,
            "owner": owner,
            "lease": lease_seconds,
            "state": state.value if state else None,
            "next_step": next_step,
            "code": failure_code,
            "reason": failure_reason,
            "release": release,
        }
        # One CTE per step row (not one multi-row VALUES) so that each keeps the exact
        # upsert of a single record: `coalesce(error, last_error)` needs the row's own
        # parameter, which EXCLUDED cannot tell apart from an empty error.
        ctes = []
        for n, step in enumerate(steps):
            ctes.append(
                f", step_{n} AS (INSERT INTO saga_steps (saga_id, step_index, name, state, attempts, "
                f"idempotency_key, last_error, result) SELECT %(saga_id)s, %(i{n})s, %(name{n})s, "
                f"%(state{n})s, %(attempt{n})s, %(key{n})s, coalesce(%(error{n})s, ''), %(result{n})s "
                f"FROM moved "
                f"ON CONFLICT (saga_id, step_index) DO UPDATE SET state = EXCLUDED.state, "
                f"attempts = saga_steps.attempts + %(attempt{n})s, "
                f"last_error = coalesce(%(error{n})s, saga_steps.last_error), "
                f"result = coalesce(EXCLUDED.result, saga_steps.result), updated_at = now())"
            )
            params.update(
                {
                    f"i{n}": step.index,
                    f"name{n}": step.name,
                    f"state{n}": step.state.value,
                    f"attempt{n}": 1 if step.attempt else 0,
                    f"key{n}": step.key,
                    f"error{n}": step.error,
                    f"result{n}": Jsonb(step.result) if step.result is not None else None,
                }
            )
        cur = await self.conn.execute(
            "WITH moved AS (UPDATE sagas SET state = coalesce(%(state)s, state), "
            "next_step = coalesce(%(next_step)s, next_step), "
            "failure_code = coalesce(%(code)s, failure_code), "
            "failure_reason = coalesce(%(reason)s, failure_reason), "
            "lease_owner = CASE WHEN %(release)s THEN NULL ELSE lease_owner END, "
            "lease_expires_at = CASE WHEN %(release)s THEN NULL "
            "ELSE now() + %(lease)s * interval '1 second' END, "
            "next_attempt_at = CASE WHEN %(release)s THEN now() ELSE next_attempt_at END, "
            "updated_at = now() WHERE saga_id = %(saga_id)s AND lease_owner = %(owner)s RETURNING 1)"
            + "".join(ctes)
            + " SELECT count(*) AS moved FROM moved",
            params,
        )
        return cur

    @staticmethod
    async def held(saga_id: uuid.UUID, cur: AsyncCursor[Any]) -> None:
        """Raises `LeaseLost` unless the `write` of `cur` moved the saga."""
        row = await cur.fetchone()
        if row is None or row["moved"] != 1:
            raise LeaseLost(saga_id)

    async def release(self, saga_id: uuid.UUID, owner: str, retry_in_seconds: float | None) -> None:
        await self.conn.execute(
            "UPDATE sagas SET lease_owner = NULL, lease_expires_at = NULL, "
            "next_attempt_at = now() + coalesce(%s, 0) * interval '1 second', updated_at = now() "
            "WHERE saga_id = %s AND lease_owner = %s",
            (retry_in_seconds, saga_id, owner),
        )

    async def list_sagas(
        self,
        state: str | None,
        saga_type: str | None,
        reference_id: uuid.UUID | None,
        limit: int,
        before: tuple[str, str] | None,
    ) -> list[SagaRecord]:
        cur = await self.conn.execute(
            f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE (%(s)s::text IS NULL OR state = %(s)s) "
            f"AND (%(t)s::text IS NULL OR saga_type = %(t)s) "
            f"AND (%(r)s::uuid IS NULL OR reference_id = %(r)s) "
            f"AND (%(bt)s::timestamptz IS NULL OR (created_at, saga_id) < (%(bt)s, %(bi)s::uuid)) "
            f"ORDER BY created_at DESC, saga_id DESC LIMIT %(limit)s",
            {
                "s": state,
                "t": saga_type,
                "r": reference_id,
                "bt": before[0] if before else None,
                "bi": before[1] if before else None,
                "limit": limit,
            },
        )
        return [_saga(r) for r in await cur.fetchall()]

    async def reopen(self, saga_id: uuid.UUID) -> bool:
        """An operator's retry of a FAILED saga: compensate again from where it stopped."""
        cur = await self.conn.execute(
            "UPDATE sagas SET state = 'COMPENSATING', next_attempt_at = now(), updated_at = now() "
            "WHERE saga_id = %s AND state = 'FAILED' RETURNING saga_id",
            (saga_id,),
        )
        return await cur.fetchone() is not None
