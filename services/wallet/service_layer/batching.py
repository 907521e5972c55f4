"""Group commit for transfers: concurrent TransferFunds requests share one database
transaction, each still getting exactly its own answer.

While one batch is in the database, the requests that arrive queue here; when it is
done, the next batch takes everything queued (at most `max_size`, in arrival order). So
an idle service runs a lone request at once (a batch of one takes the one-transfer
path), and under load the batches grow by themselves with the time a batch takes:
the cost of a transaction (locks, round trips, the commit's WAL flush, the balance
cache's two Redis calls) is paid once per batch instead of once per request, and a hot
wallet credited by hundreds of payers is one row update per batch.

How a batch runs, what each order gets and why it cannot deadlock is
`Ledger.transfer_many` (service_layer/ledger.py) and the README's concurrency section.

One batch at a time per process: batches of one replica never wait on each other's
locks, and nothing is gained by splitting the queue, since concurrent batches over
shared wallets would only queue on their row locks. A request whose caller has gone
(deadline, cancellation) before its batch starts is dropped from it; one already in a
running batch is decided with it, exactly as a transaction already in flight would be.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter

BATCHES = Counter("interpay_wallet_transfer_batches_total", "Transfer batches run (group commits)")
BATCHED = Counter("interpay_wallet_transfer_batched_orders_total", "Transfer orders decided in batches")
FALLBACKS = Counter(
    "interpay_wallet_transfer_batch_fallbacks_total",
    "Transfer batches that failed as a whole and ran their orders one by one",
)

Order = TypeVar("Order")
Result = TypeVar("Result")


@dataclass
class _Waiting(Generic[Order, Result]):
    order: Order
    future: asyncio.Future[Result]
    # The caller's context (its trace, its log fields): the events of its order carry it.
    context: contextvars.Context


RunBatch = Callable[[Sequence[Order], Sequence[contextvars.Context]], Awaitable[list[Result | BaseException]]]


class Batcher(Generic[Order, Result]):
    """Queues orders and runs them in batches, one batch at a time (module docstring).

    `run` decides a batch and returns one outcome per order, in order: a result, or the
    exception that order's caller gets. It must not raise for one order's sake."""

    def __init__(self, run: RunBatch[Order, Result], max_size: int = 256) -> None:
        if max_size < 1:
            raise ValueError("a batch holds at least one order")
        self.run = run
        self.max_size = max_size
        self._queue: deque[_Waiting[Order, Result]] = deque()
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, order: Order) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(order, future, contextvars.copy_context()))
        if self._draining is None:
            # The drain runs in a context of its own, not the first caller's: its database
            # work belongs to no one request.
            self._draining = asyncio.get_running_loop().create_task(
                self._drain(), context=contextvars.Context()
            )
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch: list[_Waiting[Order, Result]] = []
                while self._queue and len(batch) < self.max_size:
                    waiting = self._queue.popleft()
                    if not waiting.future.done():  # its caller has gone: nothing to decide
                        batch.append(waiting)
                if batch:
                    await self._decide(batch)
        finally:
            self._draining = None

    async def _decide(self, batch: list[_Waiting[Order, Result]]) -> None:
        try:
            outcomes = await self.run([w.order for w in batch], [w.context for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} orders returned {len(outcomes)} outcomes")
        except BaseException as exc:
            # Never leave a caller waiting: each gets the failure (and a cancelled drain
            # still ends every request it had taken).
            for waiting in batch:
                if waiting.future.done():
                    continue
                if isinstance(exc, Exception):
                    waiting.future.set_exception(exc)
                else:
                    waiting.future.cancel()
            if not isinstance(exc, Exception):
                raise
            return
        BATCHES.inc()
        BATCHED.inc(len(batch))
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if waiting.future.done():
                continue
            if isinstance(outcome, BaseException):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)
