"""The transfer load generator: one OS process per worker, each running a grpc.aio event
loop with a fixed number of lanes (coroutines), each lane keeping exactly one
TransferFunds in flight. Several processes, because a single Python client process (one
GIL) can itself become the bottleneck on this machine.

A worker connects, reports ready, waits for the shared `go` event, runs `warmup` seconds
unrecorded, then `duration` seconds recorded; a lane stops at the end of the window or
after `max_requests` requests, whichever comes first, and every RPC has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from array import array
from collections import Counter
from typing import Any

import grpc
import uvloop
from interpay.common.v1.money_pb2 import Money
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from bench.common import check_loopback, service_aio_channel

RPC_DEADLINE_S = 10.0
FAILURE_BACKOFF_S = 0.01  # a failing service must not turn a lane into a busy loop


def worker_main(job: dict[str, Any], ready: Any, go: Any, results: Any) -> None:
    """Process entry point (spawned): run the job and put its result on `results`."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the services run
            results.put(runner.run(_run(job, ready, go)))
    except BaseException as exc:  # report, never hang the parent
        results.put({"worker": job["worker"], "pid": os.getpid(), "error": repr(exc)})


async def _run(job: dict[str, Any], ready: Any, go: Any) -> dict[str, Any]:
    target = check_loopback(job["target"])
    rng = random.Random(job["seed"])
    payers: list[str] = job["payers"]
    merchant: str | None = job.get("merchant")
    currency: str = job["currency"]
    prefix: str = job["reference_prefix"]
    lanes: int = job["lanes"]
    warmup: float = job["warmup"]
    duration: float = job["duration"]
    max_requests: int = job["max_requests"]

    latencies = array("d")
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    failure_samples: list[str] = []
    seq = itertools.count()

    options = [("grpc.max_receive_message_length", 4 * 1024 * 1024)]
    # TransferFunds is internal: the load stands in for the orchestrator's saga steps.
    async with service_aio_channel(target, "wallet", "orchestrator", options) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=15)
        stub = WalletServiceStub(channel)
        ready.put(os.getpid())
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, 60.0):
            raise TimeoutError("no go signal within 60 s")
        t_go = time.monotonic()
        window_start = t_go + warmup
        window_end = window_start + duration
        cpu: dict[str, float] = {}

        async def cpu_window() -> None:
            await asyncio.sleep(max(0.0, window_start - time.monotonic()))
            cpu["start"] = time.process_time()
            await asyncio.sleep(max(0.0, window_end - time.monotonic()))
            cpu["end"] = time.process_time()

        async def lane() -> None:
            while True:
                n = next(seq)
                if n >= max_requests or time.monotonic() >= window_end:
                    return
                if merchant is None:
                    source, destination = rng.sample(payers, 2)
                else:
                    source, destination = rng.choice(payers), merchant
                request = pb.TransferFundsRequest(
                    source_wallet_id=source,
                    destination_wallet_id=destination,
                    amount=Money(amount_minor=rng.randint(1, 100), currency=currency),
                    reference=f"{prefix}:{n}",
                    kind=pb.TRANSACTION_KIND_TRANSFER,
                    description="bench",
                )
                counts["sent"] += 1
                sent = time.perf_counter()
                try:
                    await stub.TransferFunds(request, timeout=RPC_DEADLINE_S)
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] += 1
                    if len(failure_samples) < 5:
                        failure_samples.append(f"{exc.code().name}: {exc.details()}")
                    await asyncio.sleep(FAILURE_BACKOFF_S)
                    continue
                elapsed = time.perf_counter() - sent
                done_at = time.monotonic()
                counts["ok_total"] += 1
                if window_start <= done_at <= window_end:
                    counts["ok_window"] += 1
                    latencies.append(elapsed)

        await asyncio.gather(cpu_window(), *(lane() for _ in range(lanes)))

    return {
        "worker": job["worker"],
        "pid": os.getpid(),
        "lanes": lanes,
        "ok_window": counts["ok_window"],
        "ok_total": counts["ok_total"],
        "requests_sent": counts["sent"],
        "failures": dict(failures),
        "failure_samples": failure_samples,
        "latencies": latencies.tolist(),
        "cpu_seconds": round(cpu.get("end", 0.0) - cpu.get("start", 0.0), 3),
        "window_seconds": duration,
    }
