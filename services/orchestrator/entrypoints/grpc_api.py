"""The OrchestratorService servicer: start sagas, inspect them, retry a failed one."""

from __future__ import annotations

import uuid
from typing import Any

from google.protobuf.message import Message
from interpay.orchestrator.v1 import orchestrator_service_pb2 as pb

from services.framework import paging
from services.framework.proto import timestamp
from services.orchestrator.adapters.repository import SagaRecord, SagaRepository, StepRecord
from services.orchestrator.service_layer.engine import SagaEngine


def saga_pb(saga: SagaRecord, steps: list[StepRecord]) -> pb.Saga:
    return pb.Saga(
        saga_id=str(saga.saga_id),
        saga_type=pb.SagaType.Value(f"SAGA_TYPE_{saga.saga_type}"),
        state=pb.Saga.State.Value(f"STATE_{saga.state.value}"),
        reference_id=str(saga.reference_id),
        reference=saga.reference,
        failure_reason=f"{saga.failure_code}: {saga.failure_reason}" if saga.failure_code else "",
        create_time=timestamp(saga.created_at),
        update_time=timestamp(saga.updated_at),
        steps=[
            pb.SagaStep(
                name=s.name,
                state=pb.SagaStep.State.Value(f"STATE_{s.state.value}"),
                attempts=s.attempts,
                idempotency_key=s.idempotency_key,
                last_error=s.last_error,
                result_id=str(
                    (s.result or {}).get("hold_id")
                    or (s.result or {}).get("transaction_id")
                    or (s.result or {}).get("check_id")
                    or ""
                ),
                start_time=timestamp(s.started_at),
                update_time=timestamp(s.updated_at),
            )
            for s in steps
        ],
    )


class OrchestratorServicer:
    def __init__(self, engine: SagaEngine) -> None:
        self.engine = engine

    async def _start(
        self,
        saga_type: str,
        reference: str,
        reference_id: str,
        input_: Message,
        secret: Message | None = None,
    ) -> pb.Saga:
        saga_id = await self.engine.start(saga_type, reference, uuid.UUID(reference_id), input_, secret)
        return saga_pb(*await self.engine.load(saga_id))

    async def StartPaymentSaga(
        self, request: pb.StartPaymentSagaRequest, context: Any
    ) -> pb.StartPaymentSagaResponse:
        stored = pb.PaymentSagaInput()
        stored.CopyFrom(request.input)
        stored.ClearField("cvv")  # used once, in memory, stored nowhere
        secret = pb.PaymentSagaInput(cvv=request.input.cvv) if request.input.cvv else None
        return pb.StartPaymentSagaResponse(
            saga=await self._start("PAYMENT", request.reference, request.input.payment_id, stored, secret)
        )

    async def StartCaptureSaga(
        self, request: pb.StartCaptureSagaRequest, context: Any
    ) -> pb.StartCaptureSagaResponse:
        return pb.StartCaptureSagaResponse(
            saga=await self._start("CAPTURE", request.reference, request.input.payment_id, request.input)
        )

    async def StartCancelSaga(
        self, request: pb.StartCancelSagaRequest, context: Any
    ) -> pb.StartCancelSagaResponse:
        return pb.StartCancelSagaResponse(
            saga=await self._start("CANCEL", request.reference, request.input.payment_id, request.input)
        )

    async def StartRefundSaga(
        self, request: pb.StartRefundSagaRequest, context: Any
    ) -> pb.StartRefundSagaResponse:
        return pb.StartRefundSagaResponse(
            saga=await self._start("REFUND", request.reference, request.input.refund_id, request.input)
        )

    async def StartTransferSaga(
        self, request: pb.StartTransferSagaRequest, context: Any
    ) -> pb.StartTransferSagaResponse:
        return pb.StartTransferSagaResponse(
            saga=await self._start("TRANSFER", request.reference, request.input.transfer_id, request.input)
        )

    async def StartPayoutSaga(
        self, request: pb.StartPayoutSagaRequest, context: Any
    ) -> pb.StartPayoutSagaResponse:
        return pb.StartPayoutSagaResponse(
            saga=await self._start("PAYOUT", request.reference, request.input.payout_id, request.input)
        )

    async def GetSaga(self, request: pb.GetSagaRequest, context: Any) -> pb.GetSagaResponse:
        return pb.GetSagaResponse(saga=saga_pb(*await self.engine.load(uuid.UUID(request.saga_id))))

    async def ListSagas(self, request: pb.ListSagasRequest, context: Any) -> pb.ListSagasResponse:
        cursor = paging.decode(request.page_token)
        size = paging.page_size(request.page_size)
        async with self.engine.db.transaction() as conn:
            repo = SagaRepository(conn)
            rows = await repo.list_sagas(
                pb.Saga.State.Name(request.state).removeprefix("STATE_") if request.state else None,
                pb.SagaType.Name(request.saga_type).removeprefix("SAGA_TYPE_") if request.saga_type else None,
                uuid.UUID(request.reference_id) if request.reference_id else None,
                size + 1,
                (cursor[0], cursor[1]) if cursor and len(cursor) == 2 else None,
            )
            token = ""
            if len(rows) > size:
                rows = rows[:size]
                token = paging.encode([rows[-1].created_at.isoformat(), str(rows[-1].saga_id)])
            sagas = [saga_pb(r, await repo.steps(r.saga_id)) for r in rows]
        return pb.ListSagasResponse(sagas=sagas, next_page_token=token)

    async def RetrySaga(self, request: pb.RetrySagaRequest, context: Any) -> pb.RetrySagaResponse:
        saga_id = uuid.UUID(request.saga_id)
        await self.engine.retry(saga_id)
        return pb.RetrySagaResponse(saga=saga_pb(*await self.engine.load(saga_id)))
