"""The run's results as a Markdown table (stdout) and a figure (bench/results/bench.png)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CPU_COLUMNS = ("wallet service", "PostgreSQL", "load generator", "whole machine")


def _ok(flag: Any) -> str:
    if isinstance(flag, str):
        return flag
    return "PASS" if flag else "**FAIL**"


def _cores(cpu: dict[str, Any]) -> str:
    cores = cpu["cores"]
    parts = [
        f"{name} {value:.2f}" for name, value in sorted(cores.items(), key=lambda kv: -kv[1]) if value >= 0.01
    ]
    m = cpu["machine"]
    parts.append(f"irq {m.get('irq_cores', 0):.2f}; other {m['other_cores']:.2f}")
    parts.append(f"machine busy {m['busy_fraction']:.0%}, iowait {m['iowait_fraction']:.0%}")
    return "; ".join(parts)


def subset_markdown(r: dict[str, Any]) -> str:
    """The table for a run of only some phases (`--phases`): the pgbench and transfer rows,
    CPU per operation, and the ratios that what ran can give."""
    m = r["machine"]
    lines = [
        f"## InterPay bench, phases {','.join(r['phases'])} — {m['date_utc']} (run {r['run_id']}, "
        f"profile {r['profile']})",
        "",
        f"{m['nproc']} cores, git {m['git_commit']} (+{m['git_uncommitted_files']} uncommitted files); "
        f"fsync probe {m['fsync_probe']['usecs_per_op']} µs/op; other meshes: "
        + ", ".join(f"{k} {v.split(' ')[0]}" for k, v in m["other_meshes"].items()),
        "",
        "| measurement | setting | throughput | p50 ms | p95 ms | p99 ms | failures | CPU ms/op "
        "(wallet / postgres / clients / machine) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]

    def per_op(run: dict[str, Any]) -> str:
        o = run["cpu_ms_per_op"]
        client = sum(v for k, v in o.items() if k.startswith(("loadgen", "pgbench")))
        cells = [o.get("wallet"), o.get("postgres"), client, o.get("machine_total")]
        return " / ".join("—" if c is None else f"{c:.3f}" for c in cells)

    for run in r.get("pgbench", {}).get("runs", []):
        lat = run["latency"]
        best = " ★" if run["clients"] == r["pgbench"]["best"]["clients"] else ""
        lines.append(
            f"| pgbench tpcb-like{best} | {run['clients']} clients | {run['tps']:.0f} TPS "
            f"| {lat['p50_ms']:.2f} | {lat['p95_ms']:.2f} | {lat['p99_ms']:.2f} | {run['failed']} "
            f"| {per_op(run)} |"
        )
    for scenario, label in (("uniform", "TransferFunds uniform"), ("hot", "TransferFunds hot account")):
        for run in r.get(scenario, {}).get("runs", []):
            lat = run["latency"]
            best = " ★" if run["inflight"] == r[scenario]["best"]["inflight"] else ""
            lines.append(
                f"| {label}{best} | {run['inflight']} in flight | {run['throughput_rps']:.0f} RPC/s "
                f"| {lat['p50_ms']:.2f} | {lat['p95_ms']:.2f} | {lat['p99_ms']:.2f} | {run['failures']} "
                f"| {per_op(run)} |"
            )
    lines += ["", "| ratio / check | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in r["ratios"].items() if v is not None and not isinstance(v, dict)]
    lines += [f"| {k} | {_ok(v)} |" for k, v in r["verdict"].items()]
    if r.get("noise", {}).get("noisy"):
        lines += ["", f"> ⚠ other processes used up to {r['noise']['max_other_cores']:.2f} cores"]
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    m, ratios, verdict = r["machine"], r["ratios"], r["verdict"]
    lines = [
        f"## InterPay bench — {m['date_utc']} (run {r['run_id']})",
        "",
        f"{m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, PostgreSQL {m['postgres']}, "
        f"grpcio {m['grpcio']}, git {m['git_commit']} (+{m['git_uncommitted_files']} uncommitted files); "
        f"fsync probe {m['fsync_probe']['usecs_per_op']} µs/op; other meshes: "
        + ", ".join(f"{k} {v.split(' ')[0]}" for k, v in m["other_meshes"].items()),
        "",
        "| measurement | setting | throughput | p50 ms | p95 ms | p99 ms | failures | CPU (cores) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in r["pgbench"]["runs"]:
        lat = run["latency"]
        best = " ★" if run["clients"] == r["pgbench"]["best"]["clients"] else ""
        lines.append(
            f"| pgbench tpcb-like{best} | {run['clients']} clients, -j {run['threads']}, {run['seconds']} s "
            f"| {run['tps']:.0f} TPS | {lat['p50_ms']:.2f} | {lat['p95_ms']:.2f} | {lat['p99_ms']:.2f} "
            f"| {run['failed']} | {_cores(run['cpu'])} |"
        )
    for scenario, label in (("uniform", "TransferFunds uniform"), ("hot", "TransferFunds hot account")):
        for run in r[scenario]["runs"]:
            lat = run["latency"]
            best = " ★" if run["inflight"] == r[scenario]["best"]["inflight"] else ""
            fails = f"**{run['failures']}**" if run["failures"] else "0"
            lines.append(
                f"| {label}{best} | {run['inflight']} in flight, {run['workers']} procs, {run['seconds']} s "
                f"| {run['throughput_rps']:.0f} RPC/s | {lat['p50_ms']:.2f} | {lat['p95_ms']:.2f} "
                f"| {lat['p99_ms']:.2f} | {fails} | {_cores(run['cpu'])} |"
            )
    t = r["transcoding"]
    for key, label in (
        ("direct_grpc", "GetWallet direct gRPC"),
        ("envoy_grpc", "GetWallet gRPC via Envoy"),
        ("envoy_http_json", "GetWallet HTTP/JSON via Envoy"),
    ):
        s = t[key]
        lines.append(
            f"| {label} | sequential, n={s['count']} | — | {s['p50_ms']:.3f} | {s['p95_ms']:.3f} "
            f"| {s['p99_ms']:.3f} | {s['failures']} | client {s['client_cpu_us_per_call']:.0f} µs CPU/call |"
        )
    for run in r["saga"]["closed_loop"]:
        lat = run["latency"]
        star = " ★" if run["in_flight"] == r["saga"]["best"]["in_flight"] else ""
        lines.append(
            f"| payment saga via Envoy{star} | closed loop, {run['in_flight']} in flight "
            f"| {run['throughput_per_s']:.0f} payments/s | {lat['p50_ms']:.1f} | {lat['p95_ms']:.1f} "
            f"| {lat['p99_ms']:.1f} | — | — |"
        )
    o = r["saga"]["open_model"]
    lines.append(
        f"| payment saga via Envoy | open model, {o['rate_per_s']:.0f}/s for {o['seconds']:.0f} s "
        f"| {o['sent']} sent | {o['latency']['p50_ms']:.1f} | {o['latency']['p95_ms']:.1f} "
        f"| {o['latency']['p99_ms']:.1f} | {o['errors']} | — |"
    )
    for f in (r[k] for k in ("fraud_check_single", "fraud_check", "fraud_check_open") if k in r):
        load = f.get("load") or f"{f['concurrency']} in flight"
        lines.append(
            f"| fraud CheckTransaction, {f['rules_active']} extra rules | {load} "
            f"| {f['throughput_per_s']:.0f} checks/s | {f['client_p50_ms']:.2f} | — "
            f"| {f['client_p99_ms']:.2f} "
            f"| {sum(f['errors'].values())} | in service p50 {f['service_p50_ms']:.2f} / p99 "
            f"{f['service_p99_ms']:.2f} ms |"
        )
    noise = r.get("noise", {})
    if noise.get("noisy"):
        worst = max(noise["other_cores_by_phase"].items(), key=lambda kv: kv[1])
        lines += [
            "",
            f"> ⚠ Other processes (not the bench mesh, not its clients) used up to {worst[1]:.2f} cores "
            f"({worst[0]}): those phases ran on a busy machine, so their numbers are low and noisy. "
            "See `noise` and each phase's `top` in latest.json.",
        ]
    lines += [
        "",
        "CPU milliseconds per operation at each ★ point (cores busy ÷ operations per second; "
        "on a CPU-bound machine this is what sets the throughput):",
        "",
        "| operation | " + " | ".join(CPU_COLUMNS) + " |",
        "|---|" + "---:|" * len(CPU_COLUMNS),
    ]
    best_pg = next(x for x in r["pgbench"]["runs"] if x["clients"] == r["pgbench"]["best"]["clients"])
    rows = [("pgbench tpcb-like transaction", best_pg["cpu_ms_per_op"])]
    for scenario in ("uniform", "hot"):
        run = next(x for x in r[scenario]["runs"] if x["inflight"] == r[scenario]["best"]["inflight"])
        rows.append((f"TransferFunds, {scenario}", run["cpu_ms_per_op"]))
    for label, per_op in rows:
        client = sum(v for k, v in per_op.items() if k.startswith(("loadgen", "pgbench")))
        cells = [per_op.get("wallet"), per_op.get("postgres"), client, per_op.get("machine_total")]
        lines.append(f"| {label} | " + " | ".join("—" if c is None else f"{c:.3f}" for c in cells) + " |")
    lines += [
        "",
        "| target | measured | goal | verdict |",
        "|---|---:|---:|---|",
        f"| uniform transfer RPC/s ÷ pgbench TPS | {ratios['uniform_vs_pgbench']:.3f} "
        f"({r['uniform']['best']['throughput_rps']:.0f} / {r['pgbench']['best']['tps']:.0f}) | ≥ 0.6 "
        f"| {_ok(verdict['uniform_vs_pgbench_ge_0.6'])} |",
        f"| hot ÷ uniform throughput | {ratios['hot_vs_uniform']:.3f} "
        f"({r['hot']['best']['throughput_rps']:.0f} / {r['uniform']['best']['throughput_rps']:.0f}) | ≥ 0.5 "
        f"| {_ok(verdict['hot_vs_uniform_ge_0.5'])} |",
        f"| hot account failures | {r['hot']['failures']} | 0 | {_ok(verdict['hot_zero_failures'])} |",
        f"| Envoy HTTP/JSON − direct gRPC, p50 | {t['http_json_minus_direct_p50_ms']:.3f} ms | ≤ 1 ms "
        f"| {_ok(verdict['transcoding_p50_le_1ms'])} |",
        f"| payment saga ÷ pgbench TPS | {ratios['saga_vs_pgbench']:.3f} "
        f"({r['saga']['best']['throughput_per_s']:.0f} / {r['pgbench']['best']['tps']:.0f}) | ≥ 0.1 "
        f"| {_ok(verdict['saga_vs_pgbench_ge_0.1'])} |",
        f"| saga open model at 70%: p99 ÷ p50 | {r['saga']['open_model']['p99_over_p50']} | ≤ 10 "
        f"| {_ok(verdict['saga_open_model_p99_le_10x_p50'])} |",
        f"| saga open model errors | {r['saga']['open_model']['error_rate']:.4%} | < 0.1% "
        f"| {_ok(verdict['saga_open_model_errors_lt_0.1pct'])} |",
        f"| fraud check p99 inside the service, 1 in flight "
        f"| {r['fraud_check_single']['service_p99_ms']:.2f} ms | ≤ 5 ms "
        f"| {_ok(verdict['fraud_check_service_p99_le_5ms_one_in_flight'])} |",
        f"| fraud check p99 inside the service, 4 in flight (saturated) "
        f"| {r['fraud_check']['service_p99_ms']:.2f} ms "
        f"| ≤ 5 ms | {_ok(verdict['fraud_check_service_p99_le_5ms'])} |",
        f"| fraud check p99 inside the service, open model at 50% of capacity "
        f"| {r['fraud_check_open']['service_p99_ms']:.2f} ms "
        f"| ≤ 5 ms | {_ok(verdict['fraud_check_service_p99_le_5ms_open_model'])} |",
        f"| all TransferFunds RPCs succeeded | {r['uniform']['failures'] + r['hot']['failures']} failed | 0 "
        f"| {_ok(verdict['zero_failed_rpcs'])} |",
        f"| ledger after the run (money conserved, one transaction per success) "
        f"| {r['ledger_check']['ledger_transactions_recorded']} tx / "
        f"{r['ledger_check']['successful_rpcs']} ok "
        f"| equal | {_ok(verdict['ledger_consistent'])} |",
        "",
        f"Load: {r['uniform']['load_generation']}.",
        f"Total time {r['elapsed_seconds']:.0f} s. Full numbers: bench/results/latest.json; "
        "figure: bench/results/bench.png.",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.4), gridspec_kw={"width_ratios": [1.25, 1, 0.9]})
    fig.suptitle(
        f"InterPay bench {r['machine']['date_utc'][:16]} — {r['machine']['nproc']} cores, "
        f"PostgreSQL {r['machine']['postgres']}, same cluster for every bar",
        fontsize=11,
    )

    # Throughput: every sweep point, the best of each marked.
    labels, values, colors = [], [], []
    for run in r["pgbench"]["runs"]:
        labels.append(f"pgbench\nc={run['clients']}")
        values.append(run["tps"])
        colors.append("#4c72b0")
    for scenario, color in (("uniform", "#55a868"), ("hot", "#dd8452")):
        for run in r[scenario]["runs"]:
            labels.append(f"{scenario}\n{run['inflight']} in flight")
            values.append(run["throughput_rps"])
            colors.append(color)
    bars = ax1.bar(range(len(values)), values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax1.text(
            bar.get_x() + bar.get_width() / 2, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8
        )
    tps = r["pgbench"]["best"]["tps"]
    ax1.axhline(tps * 0.6, color="#4c72b0", ls="--", lw=1)
    ax1.text(
        len(values) - 0.5,
        tps * 0.6,
        "0.6 × pgbench (target)",
        ha="right",
        va="bottom",
        fontsize=8,
        color="#4c72b0",
    )
    ax1.set_ylim(0, max(values) * 1.4)
    ax1.set_xticks(range(len(values)), labels, fontsize=7.5)
    ax1.set_ylabel("transactions or successful RPCs per second")
    ax1.set_title("Throughput (pgbench TPS vs TransferFunds RPC/s)", fontsize=10)
    ratios = r["ratios"]
    ax1.text(
        0.35,
        0.97,
        f"uniform ÷ pgbench = {ratios['uniform_vs_pgbench']:.2f} (target ≥ 0.6)\n"
        f"hot ÷ uniform = {ratios['hot_vs_uniform']:.2f} (target ≥ 0.5)\n"
        f"failures: uniform {r['uniform']['failures']}, hot {r['hot']['failures']}",
        transform=ax1.transAxes,
        va="top",
        ha="left",
        fontsize=8.5,
        bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85},
    )

    # Latency at the best point of each.
    series = [
        (
            "pgbench",
            next(x for x in r["pgbench"]["runs"] if x["clients"] == r["pgbench"]["best"]["clients"])[
                "latency"
            ],
        ),
        ("uniform", r["uniform"]["best"]["latency"]),
        ("hot", r["hot"]["best"]["latency"]),
    ]
    width = 0.25
    for i, pct in enumerate(("p50_ms", "p95_ms", "p99_ms")):
        xs = [j + (i - 1) * width for j in range(len(series))]
        vals = [s[1][pct] for s in series]
        ax2.bar(xs, vals, width, label=pct.replace("_ms", ""))
        for x, v in zip(xs, vals, strict=True):
            ax2.text(x, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(
        range(len(series)),
        [
            f"pgbench c={r['pgbench']['best']['clients']}",
            f"uniform {r['uniform']['best']['inflight']} in flight",
            f"hot {r['hot']['best']['inflight']} in flight",
        ],
        fontsize=8,
    )
    ax2.set_ylabel("ms")
    ax2.set_title("Latency at each best throughput point", fontsize=10)
    ax2.legend(fontsize=8)

    # Transcoding.
    t = r["transcoding"]
    paths = [
        ("direct gRPC", t["direct_grpc"]),
        ("gRPC via Envoy", t["envoy_grpc"]),
        ("HTTP/JSON via Envoy", t["envoy_http_json"]),
    ]
    for i, pct in enumerate(("p50_ms", "p99_ms")):
        xs = [j + (i - 0.5) * 0.35 for j in range(len(paths))]
        vals = [p[1][pct] for p in paths]
        ax3.bar(xs, vals, 0.35, label=pct.replace("_ms", ""), color=["#8172b2", "#c44e52"][i])
        for x, v in zip(xs, vals, strict=True):
            ax3.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax3.set_xticks(range(len(paths)), [p[0] for p in paths], fontsize=8)
    ax3.set_ylabel("ms")
    ax3.set_title(
        f"Sequential GetWallet, n={t['direct_grpc']['count']} per path\n"
        f"HTTP/JSON − direct at p50: {t['http_json_minus_direct_p50_ms']:.2f} ms (target ≤ 1)",
        fontsize=10,
    )
    ax3.legend(fontsize=8)

    o = r["saga"]["open_model"]
    footer = (
        f"Payment saga through Envoy: {r['saga']['best']['throughput_per_s']:.0f} payments/s closed-loop "
        f"(÷ pgbench {r['ratios']['saga_vs_pgbench']:.3f}); open model at {o['rate_per_s']:.0f}/s: p50 "
        f"{o['latency']['p50_ms']:.0f} ms, p99 {o['latency']['p99_ms']:.0f} ms, errors {o['errors']}. Load: "
        + r["uniform"]["load_generation"]
        + "."
    )
    fig.text(0.01, 0.01, textwrap.fill(footer, 230), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    tmp = path.with_suffix(".png.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
