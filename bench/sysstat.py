"""Where the CPU goes during a measured window, read from /proc (no psutil needed).

PostgreSQL is counted as the postmaster plus every live child plus the children it has
already reaped (its cutime/cstime), so a backend that exits inside the window (pgbench
disconnecting) is still counted. The wallet service and Envoy are single processes whose
pids supervisord knows. The machine as a whole comes from /proc/stat, including iowait.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import DATA, ROOT

TICK = os.sysconf("SC_CLK_TCK")
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; everything after the last ')' is fixed fields.
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu(pid: int, with_reaped_children: bool = False) -> float:
    """CPU seconds (user+system) a process has used; 0 if it is gone."""
    fields = _proc_stat(pid)
    if fields is None:
        return 0.0
    # fields[0] is state (field 3); utime is field 14 -> index 11, stime 12, cutime 13, cstime 14.
    ticks = int(fields[11]) + int(fields[12])
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def children(ppid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None and int(fields[1]) == ppid:
                out.append(int(entry))
    return out


def postmaster_pid() -> int | None:
    try:
        return int((DATA / "pg" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def supervised_pid(program: str) -> int | None:
    done = subprocess.run(  # noqa: S603 S607 - fixed argv, no shell
        [str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(DATA / "supervisord.conf"), "pid", program],
        capture_output=True,
        text=True,
        check=False,
    )
    text = done.stdout.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def machine_jiffies() -> dict[str, int]:
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return {name: int(value) for name, value in zip(STAT_FIELDS, first, strict=False)}


@dataclass
class Snapshot:
    at: float
    processes: dict[str, float]
    machine: dict[str, int]


@dataclass
class CpuMeter:
    """Snapshots the CPU of the bench mesh's processes; `between` turns two into cores used."""

    pids: dict[str, int] = field(default_factory=dict)

    def discover(self) -> dict[str, int]:
        for program in ("wallet", "envoy", "redis"):
            pid = supervised_pid(program)
            if pid:
                self.pids[program] = pid
        try:  # supervisord copies every service's log output to its files: not free
            self.pids["supervisord"] = int((DATA / "run" / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            pass
        pm = postmaster_pid()
        if pm:
            self.pids["postgres"] = pm
        return dict(self.pids)

    def snapshot(self) -> Snapshot:
        procs: dict[str, float] = {}
        for name, pid in self.pids.items():
            if name == "postgres":
                procs[name] = process_cpu(pid, with_reaped_children=True) + sum(
                    process_cpu(child) for child in children(pid)
                )
            else:
                procs[name] = process_cpu(pid)
        return Snapshot(time.monotonic(), procs, machine_jiffies())

    @staticmethod
    def between(
        a: Snapshot, b: Snapshot, extra_cpu_seconds: dict[str, float] | None = None
    ) -> dict[str, Any]:
        """Cores used by each process over [a, b] (1.0 = one core fully busy), and the
        machine's split (busy / iowait / idle as fractions of all cores)."""
        wall = max(b.at - a.at, 1e-9)
        cores = {
            name: round((b.processes[name] - a.processes.get(name, 0.0)) / wall, 3) for name in b.processes
        }
        for name, seconds in (extra_cpu_seconds or {}).items():
            cores[name] = round(seconds / wall, 3)
        d = {k: b.machine[k] - a.machine[k] for k in STAT_FIELDS}
        total = max(sum(d.values()), 1)
        ncpu = os.cpu_count() or 1
        busy = total - d["idle"] - d["iowait"]
        machine = {
            "busy_fraction": round(busy / total, 3),
            "iowait_fraction": round(d["iowait"] / total, 3),
            "idle_fraction": round(d["idle"] / total, 3),
            "system_fraction": round((d["system"] + d["irq"] + d["softirq"]) / total, 3),
            "steal_fraction": round(d["steal"] / total, 3),
            "busy_cores": round(busy / total * ncpu, 3),
        }
        # Interrupt time (loopback networking's softirqs, mostly) belongs to no process.
        machine["irq_cores"] = round((d["irq"] + d["softirq"]) / total * ncpu, 3)
        known = sum(cores.values()) + machine["irq_cores"]
        machine["other_cores"] = round(max(machine["busy_cores"] - known, 0.0), 3)
        return {"wall_seconds": round(wall, 3), "cores": cores, "machine": machine}


def top_snapshot(limit: int = 12) -> list[str]:
    """The busiest processes as `top` sees them (second frame, so %CPU is over 0.5 s)."""
    try:
        done = subprocess.run(  # noqa: S603 S607 - fixed argv, no shell
            ["/usr/bin/top", "-b", "-n", "2", "-d", "0.5", "-w", "200", "-o", "%CPU"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    frames = done.stdout.split("top - ")
    lines = frames[-1].splitlines() if frames else []
    out, in_table = [], False
    for line in lines:
        if line.lstrip().startswith("PID"):
            in_table = True
            out.append(line.rstrip())
            continue
        if in_table and line.strip():
            out.append(line.rstrip())
            if len(out) > limit:
                break
        elif not in_table and line.startswith(("%Cpu", "MiB Mem", "Tasks")):
            out.append(line.rstrip())
    return out


def fsync_probe(directory: Path, seconds: float = 1.0) -> dict[str, float]:
    """8 kB write + fdatasync in a loop on the PostgreSQL data's filesystem: what one WAL
    flush costs here (pg_test_fsync's first test, shortened)."""
    path = directory / ".bench-fsync-probe.tmp"
    block = os.urandom(8192)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    n = 0
    try:
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline and n < 1_000_000:
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            n += 1
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"ops_per_second": round(n / elapsed, 1), "usecs_per_op": round(elapsed / max(n, 1) * 1e6, 1)}
