"""`make bench`: one run, one PostgreSQL (the bench profile's), every number in one file.

    python -m bench.run [--quick] [--inflight 32,128,256] [--pgbench-clients 8,16] ...
    python -m bench.run --profile work --phases pgbench,uniform,hot

Expects the bench mesh (or --profile's) to be up (scripts/bench.sh starts and stops it).
Phases, in order (--phases runs only some; such a run writes subset.json instead):

1. pgbench baseline: `pgbench -i -s 10`, then `-b tpcb-like -j 2 -T 20 -n` at each client
   count of a small sweep; the best TPS is the baseline.
2. Payment sagas through Envoy (bench/saga.py): closed-loop capacity, then an open-model
   load at 70% of it with p50/p95/p99; and the fraud check with 20 extra active rules
   (bench/fraud_check.py). These run before the transfer phases, whose ~100,000 wallet
   events the consumers would otherwise still be digesting.
3. Uniform transfers: TransferFunds straight to the wallet service between random pairs of
   user wallets, at each in-flight level of a sweep; the best throughput counts.
4. Hot account: the same, but every transfer pays one merchant wallet.
5. Transcoding overhead: sequential GetWallet, direct gRPC vs HTTP/JSON through Envoy
   (and native gRPC through Envoy, to split the proxy hop from the transcoding).
6. Ratios against the targets of the brief.

Writes bench/results/latest.json and bench/results/bench.png, prints a Markdown table.
Exits 1 if any RPC failed or the ledger does not add up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from interpay.common.v1.money_pb2 import Money
from interpay.wallet.v1 import wallet_service_pb2 as pb
from interpay.wallet.v1.wallet_service_pb2_grpc import WalletServiceStub

from bench import fraud_check, pgbench, report, saga
from bench.common import (
    DATA,
    GATEWAY_GRPC_ADDR,
    GATEWAY_URL,
    PROFILE,
    ROOT,
    WALLET_ADDR,
    check_loopback,
    latency_summary,
    pg_connect,
    service_aio_channel,
    service_channel,
)
from bench.loadgen import RPC_DEADLINE_S, worker_main
from bench.sysstat import CpuMeter, fsync_probe, top_snapshot
from scripts.operator_token import mint
from services.framework.topology import PROFILES, SERVICES

FRAUD_OPEN_SHARE = 0.5  # the open-model fraud check's arrival rate, as a share of its capacity
CURRENCY = "XTS"  # ISO 4217's code reserved for testing: bench money never mixes with real money
FUND_PER_WALLET = 1_000_000_000_000  # minor units; transfers move 1..100 each
TARGETS = {
    "uniform_vs_pgbench": 0.6,
    "hot_vs_uniform": 0.5,
    "saga_vs_pgbench": 0.1,
    "transcoding_overhead_p50_ms": 1.0,
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    """The single row a query must return."""
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    if row is None:
        raise RuntimeError(f"no row from: {query}")
    return tuple(row)


# -- PostgreSQL counters --------------------------------------------------------------------
class PgStats:
    """A superuser connection for counters, wait-event sampling and checkpoints."""

    def __init__(self) -> None:
        self.conn = pg_connect(autocommit=True)

    def checkpoint(self) -> None:
        self.conn.execute("CHECKPOINT")

    def counters(self, database: str) -> dict[str, float]:
        wal = one(self.conn, "SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")
        db = self.conn.execute(
            "SELECT xact_commit, xact_rollback, deadlocks FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone() or (0, 0, 0)
        ckpt = one(self.conn, "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
        names = [
            "wal_records",
            "wal_fpi",
            "wal_bytes",
            "wal_write",
            "wal_sync",
            "xact_commit",
            "xact_rollback",
            "deadlocks",
            "checkpoints",
        ]
        return dict(zip(names, [float(v) for v in (*wal, *db, *ckpt)], strict=True)) | {
            "at": time.monotonic()
        }

    @staticmethod
    def rates(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
        """Per-second rates over [a, b] (PostgreSQL flushes these counters about once a second,
        so they are approximate), and WAL syncs per commit (< 1 means group commit)."""
        wall = max(b["at"] - a["at"], 1e-9)
        d = {k: b[k] - a[k] for k in a if k != "at"}
        return {
            "commits_per_s": round(d["xact_commit"] / wall, 1),
            "rollbacks_per_s": round(d["xact_rollback"] / wall, 1),
            "wal_syncs_per_s": round(d["wal_sync"] / wall, 1),
            "wal_writes_per_s": round(d["wal_write"] / wall, 1),
            "wal_kb_per_s": round(d["wal_bytes"] / wall / 1024, 1),
            "wal_syncs_per_commit": round(d["wal_sync"] / d["xact_commit"], 3) if d["xact_commit"] else None,
            "wal_bytes_per_commit": round(d["wal_bytes"] / d["xact_commit"]) if d["xact_commit"] else None,
            "deadlocks": int(d["deadlocks"]),
            "checkpoints": int(d["checkpoints"]),
        }

    def wait_profile(self, database: str, samples: int = 20, interval: float = 0.05) -> dict[str, float]:
        """What the database's sessions are doing, sampled: 'CPU' (running), a wait event,
        'idle in transaction' (waiting on its client mid-transaction) or 'idle'."""
        seen: Counter[str] = Counter()
        for _ in range(samples):
            for state, wtype, wevent in self.conn.execute(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                (database,),
            ).fetchall():
                if state == "active":
                    seen["CPU" if wtype is None else f"{wtype}:{wevent}"] += 1
                else:
                    seen[state or "unknown"] += 1
            time.sleep(interval)
        total = sum(seen.values()) or 1
        return {k: round(v / total, 3) for k, v in seen.most_common()} | {
            "sessions_avg": round(total / samples, 1)
        }

    def close(self) -> None:
        self.conn.close()


# -- setup ----------------------------------------------------------------------------------
async def open_and_fund(n_users: int, run_id: str) -> tuple[list[str], str]:
    """n_users USER wallets and one MERCHANT wallet in CURRENCY, each user funded once."""
    async with service_aio_channel(WALLET_ADDR, "wallet") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=15)
        stub = WalletServiceStub(channel)
        gate = asyncio.Semaphore(16)

        async def open_wallet(owner_type: pb.OwnerType.ValueType) -> str:
            async with gate:
                reply = await stub.CreateWallet(
                    pb.CreateWalletRequest(
                        owner_type=owner_type, owner_id=str(uuid.uuid4()), currency=CURRENCY
                    ),
                    timeout=RPC_DEADLINE_S,
                )
            return str(reply.wallet.wallet_id)

        users = list(await asyncio.gather(*(open_wallet(pb.OWNER_TYPE_USER) for _ in range(n_users))))
        merchant = await open_wallet(pb.OWNER_TYPE_MERCHANT)
        fund_gate = asyncio.Semaphore(8)  # every funding debits the one system funding wallet

        async def fund(i: int, wallet_id: str) -> None:
            async with fund_gate:
                await stub.FundWallet(
                    pb.FundWalletRequest(
                        wallet_id=wallet_id,
                        amount=Money(amount_minor=FUND_PER_WALLET, currency=CURRENCY),
                        reference=f"bench:{run_id}:fund:{i}",
                        description="bench funding",
                    ),
                    timeout=RPC_DEADLINE_S,
                )

        await asyncio.gather(*(fund(i, w) for i, w in enumerate(users)))
    return users, merchant


def cpu_per_op(cpu: dict[str, Any], per_second: float) -> dict[str, float]:
    """CPU milliseconds each process spent per transaction or RPC: where one operation's
    cost goes, which on a CPU-bound machine is what decides the throughput."""
    if not per_second:
        return {}
    out = {
        name: round(cores * 1000 / per_second, 3) for name, cores in cpu["cores"].items() if cores >= 0.005
    }
    out["machine_total"] = round(cpu["machine"]["busy_cores"] * 1000 / per_second, 3)
    return out


# -- one transfer load phase ----------------------------------------------------------------
def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def transfer_phase(
    scenario: str,
    inflight: int,
    users: list[str],
    merchant: str | None,
    args: argparse.Namespace,
    run_id: str,
    meter: CpuMeter,
    pg: PgStats,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")  # fresh interpreters: no gRPC state inherited across fork
    ready, results = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    lanes = split(inflight, args.workers)
    procs = []
    for worker, n_lanes in enumerate(lanes):
        job = {
            "worker": worker,
            "target": WALLET_ADDR,
            "seed": hash((run_id, scenario, inflight, worker)) & 0xFFFFFFFF,
            "payers": users,
            "merchant": merchant,
            "currency": CURRENCY,
            "reference_prefix": f"bench:{run_id}:{scenario}:{inflight}:{worker}",
            "lanes": n_lanes,
            "warmup": args.warmup,
            "duration": args.seconds,
            # A cap far above what 2 cores can do; the time window is what normally ends a lane.
            "max_requests": int(20_000 * (args.seconds + args.warmup)),
        }
        proc = ctx.Process(target=worker_main, args=(job, ready, go, results), daemon=True)
        proc.start()
        procs.append(proc)
    try:
        for _ in procs:
            try:
                ready.get(timeout=60)
            except queue.Empty:
                errors = []
                while not results.empty():
                    errors.append(results.get_nowait())
                raise SystemExit(f"load workers did not become ready: {errors}") from None
        pg.checkpoint()  # every phase starts from a clean checkpoint
        go.set()
        t_go = time.monotonic()
        window_start, window_end = t_go + args.warmup, t_go + args.warmup + args.seconds
        time.sleep(max(0.0, window_start - time.monotonic()))
        cpu_a, pg_a = meter.snapshot(), pg.counters("interpay_wallet")
        time.sleep(max(0.0, window_start + args.seconds * 0.4 - time.monotonic()))
        waits = pg.wait_profile("interpay_wallet")
        top = top_snapshot()
        time.sleep(max(0.0, window_end - time.monotonic()))
        cpu_b, pg_b = meter.snapshot(), pg.counters("interpay_wallet")
        outs = [results.get(timeout=RPC_DEADLINE_S + 60) for _ in procs]
    finally:
        go.set()
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    crashed = [o for o in outs if "error" in o]
    if crashed:
        raise SystemExit(f"load worker crashed: {crashed}")
    latencies = [x for o in outs for x in o["latencies"]]
    failures: Counter[str] = Counter()
    samples: list[str] = []
    for o in outs:
        failures.update(o["failures"])
        samples += o["failure_samples"]
    ok_window = sum(o["ok_window"] for o in outs)
    client_cpu = {f"loadgen-{o['worker']}": o["cpu_seconds"] for o in outs}
    cpu = CpuMeter.between(cpu_a, cpu_b, client_cpu)
    return {
        "scenario": scenario,
        "inflight": inflight,
        "workers": len(outs),
        "lanes_per_worker": [o["lanes"] for o in outs],
        "seconds": args.seconds,
        "throughput_rps": round(ok_window / args.seconds, 1),
        "ok_in_window": ok_window,
        "ok_total": sum(o["ok_total"] for o in outs),
        "requests_sent": sum(o["requests_sent"] for o in outs),
        "failures": sum(failures.values()),
        "failures_by_code": dict(failures),
        "failure_samples": samples[:5],
        "latency": latency_summary(latencies),
        "cpu": cpu,
        "cpu_ms_per_op": cpu_per_op(cpu, ok_window / args.seconds),
        "postgres": pg.rates(pg_a, pg_b),
        "wallet_db_sessions": waits,
        "top": top,
    }


# -- sequential GetWallet: direct gRPC vs through Envoy ----------------------------------------
def transcoding_overhead(wallet_id: str, n: int, rounds: int = 10) -> dict[str, Any]:
    """n sequential GetWallet calls per path, interleaved in `rounds` blocks (so drift hits
    every path alike), after a warm-up of 100 calls each."""
    request = pb.GetWalletRequest(wallet_id=wallet_id)
    direct = service_channel(WALLET_ADDR, "wallet")
    via_envoy = grpc.insecure_channel(check_loopback(GATEWAY_GRPC_ADDR))  # the edge: no mTLS
    # Through the gateway a call needs a credential: an operator's token, on every path.
    authorization = f"Bearer {mint(PROFILE.name)}"
    http = httpx.Client(
        base_url=check_loopback(GATEWAY_URL), timeout=5.0, headers={"authorization": authorization}
    )
    direct_stub, envoy_stub = WalletServiceStub(direct), WalletServiceStub(via_envoy)
    path = f"/v1/wallets/{wallet_id}"

    def call_http() -> None:
        reply = http.get(path)
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")

    calls = {
        # The same credential on every path, so each one pays for verifying it and the
        # difference is the gateway's own (proxy hop, transcoding).
        "direct_grpc": lambda: direct_stub.GetWallet(
            request, timeout=5, metadata=(("authorization", authorization),)
        ),
        "envoy_http_json": call_http,
        "envoy_grpc": lambda: envoy_stub.GetWallet(
            request, timeout=5, metadata=(("authorization", authorization),)
        ),
    }
    first = http.get(path)
    if first.status_code != 200 or first.json().get("wallet", {}).get("walletId") != wallet_id:
        raise SystemExit(
            f"GetWallet through Envoy does not answer as expected: {first.status_code} {first.text[:300]}"
        )
    skipped: dict[str, str] = {}
    try:  # the native-gRPC-through-Envoy path is an extra: drop it if the gateway refuses it
        calls["envoy_grpc"]()
    except grpc.RpcError as exc:
        skipped["envoy_grpc"] = repr(exc)[:300]
        del calls["envoy_grpc"]
    lat: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, float] = dict.fromkeys(calls, 0.0)
    fails: Counter[str] = Counter()
    samples: dict[str, str] = {}
    per_round = max(1, n // rounds)
    try:
        for name, call in calls.items():  # warm-up, unrecorded
            for _ in range(100):
                try:
                    call()
                except Exception as exc:  # noqa: BLE001 - reported below
                    fails[name] += 1
                    samples.setdefault(name, repr(exc)[:300])
        order = list(calls)
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                call = calls[name]
                c0 = time.process_time()
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    try:
                        call()
                    except Exception as exc:  # noqa: BLE001 - reported below
                        fails[name] += 1
                        samples.setdefault(name, repr(exc)[:300])
                        continue
                    lat[name].append(time.perf_counter() - t0)
                cpu[name] += time.process_time() - c0
    finally:
        direct.close()
        via_envoy.close()
        http.close()
    out: dict[str, Any] = {"n_per_path": per_round * rounds, "rounds": rounds}
    for name in calls:
        out[name] = (
            latency_summary(lat[name])
            | {
                "failures": fails[name],
                "client_cpu_us_per_call": round(cpu[name] / max(len(lat[name]), 1) * 1e6, 1),
            }
            | ({"failure_sample": samples[name]} if name in samples else {})
        )
    out["http_json_minus_direct_p50_ms"] = round(
        out["envoy_http_json"]["p50_ms"] - out["direct_grpc"]["p50_ms"], 3
    )
    out["http_json_minus_direct_p99_ms"] = round(
        out["envoy_http_json"]["p99_ms"] - out["direct_grpc"]["p99_ms"], 3
    )
    for name, why in skipped.items():
        out[name] = latency_summary([]) | {"failures": 0, "client_cpu_us_per_call": 0.0, "skipped": why}
    if lat.get("envoy_grpc"):
        out["envoy_grpc_minus_direct_p50_ms"] = round(
            out["envoy_grpc"]["p50_ms"] - out["direct_grpc"]["p50_ms"], 3
        )
    return out


# -- the integrity check --------------------------------------------------------------------
def ledger_check(users: list[str], merchant: str, run_id: str, ok_total: int) -> dict[str, Any]:
    """Afterwards: the run's wallets still hold exactly what was funded, every entry sums to
    its wallet's balance, and the ledger holds one transaction per successful RPC."""
    wallets = [uuid.UUID(w) for w in [*users, merchant]]
    with pg_connect("interpay_wallet") as conn:
        total, mismatched, negative = one(
            conn,
            "SELECT sum(w.balance), "
            "count(*) FILTER (WHERE w.balance <> (SELECT coalesce(sum(e.amount), 0) "
            "  FROM wallet_transactions e WHERE e.wallet_id = w.wallet_id)), "
            "count(*) FILTER (WHERE w.available < 0) "
            "FROM wallets w WHERE w.wallet_id = ANY(%s)",
            (wallets,),
        )
        (transfers,) = one(
            conn,
            "SELECT count(*) FROM ledger_transactions WHERE reference LIKE %s AND reference NOT LIKE %s",
            (f"bench:{run_id}:%", f"bench:{run_id}:fund:%"),
        )
    expected = len(users) * FUND_PER_WALLET
    return {
        "money_conserved": int(total) == expected,
        "sum_of_balances": int(total),
        "expected_sum": expected,
        "wallets_whose_entries_differ_from_balance": int(mismatched),
        "wallets_overdrawn": int(negative),
        "ledger_transactions_recorded": int(transfers),
        "successful_rpcs": ok_total,
        "exactly_once": int(transfers) == ok_total,
    }


# -- machine --------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(  # noqa: S603 S607 - fixed argv, no shell
                cmd, capture_output=True, text=True, timeout=10, check=False, cwd=ROOT
            ).stdout.strip()
        except OSError:
            return ""

    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    with pg_connect() as conn:
        (pg_version,) = one(conn, "SHOW server_version")
        settings = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                "('shared_buffers','synchronous_commit','fsync','wal_sync_method','max_connections',"
                "'max_wal_size','checkpoint_timeout','commit_delay')"
            ).fetchall()
        )
    others = {}
    for name in (p for p in PROFILES if p != PROFILE.name):
        pidfile = ROOT / ".data" / name / "run" / "supervisord.pid"
        running = False
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
            running = True
        except (OSError, ValueError):
            pass
        others[name] = "running (left alone; it shares the CPU, idle)" if running else "not running"
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "postgres": pg_version,
        "pgbench": pgbench.version(),
        "postgres_settings": settings,
        "wallet_db_pool_max": int(os.environ.get("INTERPAY_DB_POOL_MAX", "10")),
        "git_commit": sh("git", "rev-parse", "--short", "HEAD"),
        "git_uncommitted_files": len([x for x in sh("git", "status", "--porcelain").splitlines() if x]),
        "other_meshes": others,
        "fsync_probe": fsync_probe(DATA / "pg"),
    }


# -- main -----------------------------------------------------------------------------------
PHASES = ("pgbench", "saga", "uniform", "hot", "transcoding")


def phases(text: str) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in PHASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"phases are a comma list of {', '.join(PHASES)}")
    return [x for x in PHASES if x in chosen]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--profile",
        default=PROFILE.name,
        choices=sorted(PROFILES),
        help="the mesh to measure (default bench; also INTERPAY_BENCH_PROFILE). scripts/bench.sh "
        "starts and stops that profile's mesh; bench.run alone expects it up",
    )
    p.add_argument(
        "--phases",
        type=phases,
        default=list(PHASES),
        help=f"a comma list of the phases to run (default all: {','.join(PHASES)}); a run of "
        "only some writes subset.json (no figure) instead of latest.json and bench.png",
    )
    p.add_argument("--pgbench-clients", type=ints, default=[8, 16])
    p.add_argument("--pgbench-seconds", type=int, default=20)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--inflight", type=ints, default=[32, 128, 256])  # up to saturation
    p.add_argument("--hot-inflight", type=ints, default=None, help="defaults to --inflight")
    p.add_argument("--seconds", type=int, default=20, help="measured seconds of each transfer run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--workers", type=int, default=2, help="load generator processes")
    p.add_argument("--wallets", type=int, default=500)
    p.add_argument("--get-n", type=int, default=2000)
    p.add_argument("--saga-levels", type=ints, default=[4, 8, 16])
    p.add_argument("--saga-seconds", type=int, default=10)
    p.add_argument("--budget", type=int, default=420, help="refuse to start if the plan exceeds this (s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 s per phase, one level each")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument(
        "--plan-only", action="store_true", help="check the arguments and the time plan, then exit"
    )
    args = p.parse_args()
    if args.quick:
        args.pgbench_clients, args.pgbench_seconds, args.scale = [8], 3, 1
        args.inflight, args.seconds, args.warmup, args.get_n = [16], 3, 1.0, 200
        args.saga_levels, args.saga_seconds = [8], 3
    args.hot_inflight = args.hot_inflight or args.inflight
    chosen = set(args.phases)
    plan = (
        ("pgbench" in chosen) * len(args.pgbench_clients) * (args.pgbench_seconds + 2)
        + (("uniform" in chosen) * len(args.inflight) + ("hot" in chosen) * len(args.hot_inflight))
        * (args.seconds + args.warmup + 5)
        + ("saga" in chosen) * (len(args.saga_levels) + 4) * args.saga_seconds  # + open model, 3 fraud runs
        + 90
    )
    if plan > args.budget:
        p.error(f"this plan takes about {plan} s, over the budget of {args.budget} s")
    if args.plan_only:
        print(f"bench plan: about {plan} s (budget {args.budget} s)", file=sys.stderr)
        raise SystemExit(0)
    if args.profile != PROFILE.name:
        # Every module (and every spawned load generator) reads the profile at import:
        # start again with it in the environment.
        os.environ["INTERPAY_BENCH_PROFILE"] = args.profile
        os.execv(sys.executable, [sys.executable, "-m", "bench.run", *sys.argv[1:]])  # noqa: S606
    return args


def backlog() -> float:
    """Events the mesh still has to move: unpublished outbox and audit rows, and messages
    its consumers have not processed (summed from every service's /metrics)."""
    total = 0.0
    for spec in SERVICES:
        try:
            text = httpx.get(f"http://127.0.0.1:{PROFILE.metrics_port(spec.name)}/metrics", timeout=2).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith(("interpay_outbox_pending_events", "interpay_consumer_lag_messages")):
                total += max(0.0, float(line.rsplit(" ", 1)[1]))
    return total


def settle(what: str, max_seconds: float = 20) -> dict[str, float]:
    """Waits until the events of the phases before have been published and consumed, so a
    latency phase does not share the cores with their backlog (bounded: a phase then runs
    anyway, and the backlog left is recorded)."""
    started = time.monotonic()
    left = backlog()
    while left > 0 and time.monotonic() - started < max_seconds:
        time.sleep(1)
        left = backlog()
    waited = round(time.monotonic() - started, 1)
    log(f"settled before {what} in {waited} s (events left: {left:.0f})")
    return {"waited_s": waited, "events_left": left}


def run_transfers(
    args: argparse.Namespace, run_id: str, meter: CpuMeter, pg: PgStats, machine: dict[str, Any]
) -> tuple[dict[str, Any], list[str], str]:
    """Opens and funds the wallets, then runs the chosen transfer phases."""
    results: dict[str, Any] = {}
    log(f"opening and funding {args.wallets} user wallets and one merchant wallet ({CURRENCY})")
    t0 = time.monotonic()
    users, merchant = asyncio.run(open_and_fund(args.wallets, run_id))
    results["setup"] = {
        "user_wallets": len(users),
        "merchant_wallet": merchant,
        "currency": CURRENCY,
        "funded_per_wallet_minor": FUND_PER_WALLET,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if "transcoding" in args.phases:
        # Before the transfer phases, whose ~100,000 wallet events the consumers would still
        # be digesting: the proxy's cost is measured on a quiet mesh.
        results["settle_before_transcoding"] = settle("transcoding")
        log(f"sequential GetWallet x {args.get_n}: direct gRPC vs Envoy HTTP/JSON vs Envoy gRPC")
        results["transcoding"] = transcoding_overhead(users[0], args.get_n)
    load_desc = (
        f"{args.workers} load-generator processes (multiprocessing, spawn), each one grpc.aio "
        f"event loop on one HTTP/2 channel to {WALLET_ADDR}; the in-flight level is split over "
        f"them as lanes, each lane one RPC at a time; {args.warmup:g} s warm-up then "
        f"{args.seconds} s measured; throughput = successful RPCs completed in the window / "
        f"{args.seconds} s; client, server and database share the same {machine['nproc']} cores"
    )
    for scenario, levels, dest in (
        ("uniform", args.inflight, None),
        ("hot", args.hot_inflight, merchant),
    ):
        if scenario not in args.phases:
            continue
        phase_runs = []
        for level in levels:
            log(f"{scenario} transfers, {level} in flight, {args.seconds} s")
            outcome = transfer_phase(scenario, level, users, dest, args, run_id, meter, pg)
            phase_runs.append(outcome)
            log(
                f"  -> {outcome['throughput_rps']} RPC/s, p50 {outcome['latency']['p50_ms']} ms, "
                f"p99 {outcome['latency']['p99_ms']} ms, failures {outcome['failures']}, "
                f"cores {outcome['cpu']['cores']}"
            )
            if outcome["failures"]:
                log(
                    f"  !! {outcome['failures']} FAILED RPCs: {outcome['failures_by_code']} "
                    f"{outcome['failure_samples'][:2]}"
                )
        # The saturation knee: the fewest in flight within 1% of the sweep's best
        # throughput (more in flight past it only adds queueing latency).
        top_rps = max(r["throughput_rps"] for r in phase_runs)
        best = min(
            (r for r in phase_runs if r["throughput_rps"] >= 0.99 * top_rps), key=lambda r: r["inflight"]
        )
        results[scenario] = {
            "load_generation": load_desc,
            "runs": phase_runs,
            "best": {
                "inflight": best["inflight"],
                "throughput_rps": best["throughput_rps"],
                "latency": best["latency"],
            },
            "failures": sum(r["failures"] for r in phase_runs),
        }
    ok_total = sum(r["ok_total"] for s in ("uniform", "hot") if s in results for r in results[s]["runs"])
    results["ledger_check"] = ledger_check(users, merchant, run_id, ok_total)
    return results, users, merchant


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main() -> int:
    args = parse()
    chosen = set(args.phases)
    complete = chosen == set(PHASES)
    started = time.monotonic()
    run_id = uuid.uuid4().hex[:10]
    args.out.mkdir(parents=True, exist_ok=True)
    meter = CpuMeter()
    pids = meter.discover()
    if "wallet" not in pids or "postgres" not in pids:
        raise SystemExit(f"the {PROFILE.name} mesh is not up (found {pids}); run scripts/bench.sh")
    log(f"run {run_id} on the {PROFILE.name} mesh, phases {','.join(args.phases)}: processes {pids}")
    machine = machine_info()
    log(
        f"machine: {machine['nproc']} cores, PostgreSQL {machine['postgres']}, "
        f"fsync {machine['fsync_probe']['usecs_per_op']} µs"
    )
    pg = PgStats()
    results: dict[str, Any] = {
        "run_id": run_id,
        "profile": PROFILE.name,
        "phases": args.phases,
        "machine": machine,
        "targets": TARGETS,
    }
    try:
        # 1. pgbench
        if "pgbench" in chosen:
            log(f"pgbench -i -s {args.scale}")
            init = pgbench.initialise(args.scale)
            runs = []
            for clients in args.pgbench_clients:
                pg.checkpoint()
                log(f"pgbench tpcb-like, {clients} clients, {args.pgbench_seconds} s")
                a, pa = meter.snapshot(), pg.counters("pgbench")
                outcome = pgbench.run(clients, args.pgbench_seconds)
                b, pb_ = meter.snapshot(), pg.counters("pgbench")
                outcome["cpu"] = CpuMeter.between(a, b, {"pgbench": outcome["client_cpu_seconds"]})
                outcome["cpu_ms_per_op"] = cpu_per_op(outcome["cpu"], outcome["tps"])
                outcome["postgres"] = PgStats.rates(pa, pb_)
                runs.append(outcome)
                log(f"  -> {outcome['tps']} TPS, p50 {outcome['latency']['p50_ms']} ms")
            best_pg = max(runs, key=lambda r: r["tps"])
            results["pgbench"] = {
                **init,
                "runs": runs,
                "best": {"clients": best_pg["clients"], "tps": best_pg["tps"]},
            }

        # 2. payment sagas and the fraud check, before the transfer phases: those publish
        # ~100,000 wallet events whose consumers would still be catching up here.
        if "saga" in chosen:
            log(f"payment sagas through Envoy: closed loop at {args.saga_levels}, then open model at 70%")
            results["saga"] = asyncio.run(saga.run(PROFILE.name, args.saga_seconds, tuple(args.saga_levels)))
            log(
                f"  -> best {results['saga']['best']['throughput_per_s']} payments/s; open model p50 "
                f"{results['saga']['open_model']['latency']['p50_ms']} ms p99 "
                f"{results['saga']['open_model']['latency']['p99_ms']} ms"
            )
            # The check's own latency (one in flight: no check waits for another's CPU),
            # its capacity (four in flight, a closed loop that saturates it), then checks
            # arriving at random at half that capacity (an open model: some wait for others).
            results["settle_before_fraud_check"] = settle("the fraud check")
            log("fraud CheckTransaction with 20 extra active rules: 1 in flight, 4, then open model at 50%")
            results["fraud_check_single"] = asyncio.run(fraud_check.run(PROFILE.name, args.saga_seconds, 1))
            results["fraud_check"] = asyncio.run(fraud_check.run(PROFILE.name, args.saga_seconds))
            rate = round(results["fraud_check"]["throughput_per_s"] * FRAUD_OPEN_SHARE)
            results["fraud_check_open"] = asyncio.run(
                fraud_check.run(PROFILE.name, args.saga_seconds, rate=max(rate, 1))
            )

        # 3-4. transfers (the wallets they open also serve the transcoding phase)
        if chosen & {"uniform", "hot", "transcoding"}:
            transfers, users, _merchant = run_transfers(args, run_id, meter, pg, machine)
            results |= transfers

    finally:
        pg.close()

    # 6. ratios, of what was measured
    def best(scenario: str) -> float | None:
        return results[scenario]["best"]["throughput_rps"] if scenario in results else None

    uniform, hot = best("uniform"), best("hot")
    tps = results["pgbench"]["best"]["tps"] if "pgbench" in results else None
    results["ratios"] = {
        "uniform_vs_pgbench": ratio(uniform, tps),
        "hot_vs_uniform": ratio(hot, uniform),
        "hot_vs_pgbench": ratio(hot, tps),
        "saga_vs_pgbench": ratio(results["saga"]["best"]["throughput_per_s"], tps)
        if "saga" in results
        else None,
        "per_level_hot_vs_uniform": {
            str(u["inflight"]): round(h["throughput_rps"] / u["throughput_rps"], 3)
            for u in results.get("uniform", {}).get("runs", [])
            for h in results.get("hot", {}).get("runs", [])
            if u["inflight"] == h["inflight"] and u["throughput_rps"]
        },
    }
    failures = sum(results[s]["failures"] for s in ("uniform", "hot") if s in results)
    check = results.get("ledger_check")
    ratios = results["ratios"]
    verdict: dict[str, Any] = {}
    if ratios["uniform_vs_pgbench"] is not None:
        verdict["uniform_vs_pgbench_ge_0.6"] = ratios["uniform_vs_pgbench"] >= TARGETS["uniform_vs_pgbench"]
    if ratios["hot_vs_uniform"] is not None:
        verdict["hot_vs_uniform_ge_0.5"] = ratios["hot_vs_uniform"] >= TARGETS["hot_vs_uniform"]
    if "hot" in results:
        verdict["hot_zero_failures"] = results["hot"]["failures"] == 0
    if "transcoding" in results:
        verdict["transcoding_p50_le_1ms"] = (
            results["transcoding"]["http_json_minus_direct_p50_ms"] <= TARGETS["transcoding_overhead_p50_ms"]
        )
    if "saga" in results:
        verdict["saga_vs_pgbench_ge_0.1"] = (ratios["saga_vs_pgbench"] or 0) >= TARGETS["saga_vs_pgbench"]
        verdict["saga_open_model_p99_le_10x_p50"] = results["saga"]["open_model_p99_le_10x_p50"]
        verdict["saga_open_model_errors_lt_0.1pct"] = results["saga"]["open_model_errors_lt_0.1pct"]
        verdict["saga_merchant_balance_matches"] = results["saga"]["merchant_balance_matches_captures"]
        verdict["fraud_check_service_p99_le_5ms"] = results["fraud_check"]["meets_target"]
        verdict["fraud_check_service_p99_le_5ms_one_in_flight"] = results["fraud_check_single"][
            "meets_target"
        ]
        verdict["fraud_check_service_p99_le_5ms_open_model"] = results["fraud_check_open"]["meets_target"]
    if "uniform" in results or "hot" in results:
        verdict["zero_failed_rpcs"] = failures == 0
    if check is not None:
        verdict["ledger_consistent"] = bool(
            check["money_conserved"]
            and check["exactly_once"]
            and not check["wallets_whose_entries_differ_from_balance"]
        )
    results["verdict"] = verdict
    # CPU used by processes that are neither the bench mesh nor its clients (another
    # session's tests, an idle dev mesh, the kernel's own threads): noise in every number.
    phase_cpu = [("pgbench c=" + str(x["clients"]), x) for x in results.get("pgbench", {}).get("runs", [])]
    phase_cpu += [
        (f"{s} {x['inflight']}", x) for s in ("uniform", "hot") for x in results.get(s, {}).get("runs", [])
    ]
    other = {name: x["cpu"]["machine"]["other_cores"] for name, x in phase_cpu}
    results["noise"] = {
        "other_cores_by_phase": other,
        "max_other_cores": max(other.values(), default=0.0),
        "noisy": max(other.values(), default=0.0) > 0.25,
    }
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    name = "latest.json" if complete else "subset.json"
    tmp = args.out / f"{name}.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(args.out / name)
    if complete:
        report.plot(results, args.out / "bench.png")
        print(report.markdown(results))
        log(f"wrote {args.out / name} and {args.out / 'bench.png'} in {results['elapsed_seconds']} s")
    else:
        print(report.subset_markdown(results))
        log(f"wrote {args.out / name} in {results['elapsed_seconds']} s")
    if failures:
        log(f"!!! {failures} TransferFunds RPCs FAILED; see failures_by_code in {name} !!!")
    consistent = verdict.get("ledger_consistent", True)
    if not consistent:
        log(f"!!! the ledger does not add up after the run: {check} !!!")
    return 1 if failures or not consistent else 0


if __name__ == "__main__":
    sys.exit(main())
