"""The baseline: `pgbench -b tpcb-like` on the bench profile's PostgreSQL.

A tpcb-like transaction is itself a bank transfer (update an account, a teller and a
branch balance, read the account back, append a history row, commit), so its TPS on the
same cluster is the ceiling a ledger transfer RPC is compared with.
"""

from __future__ import annotations

import glob
import os
import re
import resource
import subprocess
import tempfile
import time
from typing import Any

from bench.common import HOST, PG_BIN, PROFILE, latency_summary, pg_connect, postgres_password

DATABASE = "pgbench"


def _pgbench() -> str:
    for candidate in (PG_BIN / "pgbench", "/usr/bin/pgbench"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise SystemExit("pgbench not found (apt-get install postgresql-contrib)")


def _env() -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": postgres_password(), "PGCONNECT_TIMEOUT": "10"}


def _conn_args() -> list[str]:
    return ["-h", HOST, "-p", str(PROFILE.postgres_port), "-U", "postgres"]


def version() -> str:
    return subprocess.run(  # noqa: S603 S607 - fixed argv, no shell
        [_pgbench(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()


def initialise(scale: int) -> dict[str, Any]:
    """Creates the `pgbench` database if missing and (re)initialises it at `scale`, so every
    run starts from the same freshly vacuumed tables."""
    with pg_connect(autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 S607 - fixed argv, no shell
        [_pgbench(), *_conn_args(), "-i", "-s", str(scale), "-q", DATABASE],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"pgbench -i failed:\n{done.stderr}")
    return {"scale": scale, "init_seconds": round(time.monotonic() - started, 1)}


def run(clients: int, seconds: int, threads: int = 2) -> dict[str, Any]:
    """One `pgbench -b tpcb-like -c clients -j threads -T seconds -n` run, with every
    transaction's latency logged (-l) for percentiles."""
    with tempfile.TemporaryDirectory(prefix="interpay-pgbench-") as tmp:
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cmd = [
            _pgbench(),
            *_conn_args(),
            "-b",
            "tpcb-like",
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(seconds),
            "-n",
            "-l",
            f"--log-prefix={tmp}/pgbench_log",
            DATABASE,
        ]
        done = subprocess.run(  # noqa: S603 S607 - fixed argv, no shell
            cmd, env=_env(), capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"pgbench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        out = done.stdout
        tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))  # type: ignore[union-attr]
        processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
        failed_match = re.search(r"number of failed transactions: (\d+)", out)
        latencies: list[float] = []
        for path in glob.glob(f"{tmp}/pgbench_log*"):
            with open(path) as log:
                for line in log:
                    parts = line.split()
                    if len(parts) >= 3 and parts[2].isdigit():
                        latencies.append(int(parts[2]) / 1e6)  # microseconds
    cpu = (usage_after.ru_utime + usage_after.ru_stime) - (usage_before.ru_utime + usage_before.ru_stime)
    return {
        "clients": clients,
        "threads": threads,
        "seconds": seconds,
        "tps": round(tps, 1),
        "transactions": processed,
        "failed": int(failed_match.group(1)) if failed_match else 0,
        "latency": latency_summary(latencies),
        "client_cpu_seconds": round(cpu, 2),
        "command": f"pgbench -b tpcb-like -c {clients} -j {threads} -T {seconds} -n -l {DATABASE}",
    }
