"""The wallet's transfer batcher (services/wallet/service_layer/batching.py) on its own:
what queues while a batch runs forms the next batch, in arrival order; each caller gets
its own outcome; a caller that has gone before its batch starts is left out; a batch that
fails fails only its own callers. The rules a batch applies are tested against the real
database in tests/integration/test_wallet_batches.py."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence

import pytest

from services.wallet.service_layer.batching import Batcher


class Recorder:
    """Runs batches by answering each order with its double, or with a ValueError for a
    negative one; the first batch waits until released, so the test can queue behind it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.running = asyncio.Event()  # the first batch has started
        self.fail_next = False

    async def run(
        self, orders: Sequence[int], contexts: Sequence[contextvars.Context]
    ) -> list[int | BaseException]:
        self.batches.append(list(orders))
        assert len(contexts) == len(orders)
        if len(self.batches) == 1:
            self.running.set()
            await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the whole batch failed")
        return [ValueError(o) if o < 0 else 2 * o for o in orders]


async def queued() -> None:
    """Until the submissions just scheduled have joined the queue."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_requests_queued_behind_a_batch_form_the_next_one_in_arrival_order() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run, max_size=3)
    first = asyncio.ensure_future(batcher.submit(1))
    await recorder.running.wait()  # the first batch runs, alone
    rest = [asyncio.ensure_future(batcher.submit(n)) for n in (2, -3, 4, 5)]
    await queued()
    recorder.release.set()
    assert await first == 2
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert recorder.batches == [[1], [2, -3, 4], [5]]  # at most max_size, in order
    assert outcomes[0] == 4 and outcomes[2] == 8 and outcomes[3] == 10
    assert isinstance(outcomes[1], ValueError) and outcomes[1].args == (-3,)  # its own refusal


async def test_a_caller_gone_before_its_batch_starts_is_left_out() -> None:
    recorder = Recorder()
    batcher: Batcher[int, int] = Batcher(recorder.run)
    first = asyncio.ensure_future(batcher.submit(1))
    await recorder.running.wait()
    gone, kept = asyncio.ensure_future(batcher.submit(2)), asyncio.ensure_future(batcher.submit(3))
    await queued()
    gone.cancel()
    recorder.release.set()
    assert (await first, await kept) == (2, 6)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert recorder.batches == [[1], [3]]


async def test_a_failed_batch_fails_its_own_callers_only() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher: Batcher[int, int] = Batcher(recorder.run)
    recorder.fail_next = True
    with pytest.raises(RuntimeError, match="whole batch"):
        await batcher.submit(1)
    assert await batcher.submit(2) == 4  # the batcher goes on
    assert recorder.batches == [[1], [2]]
