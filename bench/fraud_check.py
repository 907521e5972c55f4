"""Fraud check latency: CheckTransaction over gRPC with 20 active rules.

    python -m bench.fraud_check --profile dev --seconds 10

Creates 20 rules of every type (named "bench: ...", weight 1 and limits nobody reaches,
so they change no decision of anyone else using the mesh meanwhile), drives
CheckTransaction from a few concurrent clients for the given time, then disables the
rules again. Reports throughput, the client's latency percentiles and the service's own:
each check records its decision time in fraud_checks.latency_us (read back for this run's
references) and in the `interpay_fraud_check_seconds` histogram, which includes writing
the record (read from the service's /metrics, as bucket upper bounds). Target: in-service
p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from interpay.common.v1.money_pb2 import Money
from interpay.fraud.v1 import fraud_service_pb2 as pb
from interpay.fraud.v1.fraud_service_pb2_grpc import FraudServiceStub

from services.framework.identity import TlsFiles, channel_options, plaintext
from services.framework.topology import PROFILES, Profile

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CONCURRENCY = 4
TARGET_SERVICE_P99_MS = 5.0
CURRENCY = "XTS"  # ISO 4217's code reserved for testing
HUGE = 1_000_000_000


def _duration(seconds: int) -> Duration:
    return Duration(seconds=seconds)


def bench_rules() -> list[pb.FraudRule]:
    """Twenty rules covering every type; none can fire for real traffic."""
    rules = []
    subjects = [
        pb.VELOCITY_SUBJECT_USER,
        pb.VELOCITY_SUBJECT_CARD_FINGERPRINT,
        pb.VELOCITY_SUBJECT_DEVICE,
        pb.VELOCITY_SUBJECT_IP_ADDRESS,
        pb.VELOCITY_SUBJECT_EMAIL,
    ]
    for i, subject in enumerate(subjects):
        for window in (600, 86_400):
            rules.append(
                pb.FraudRule(
                    rule_type=pb.RULE_TYPE_VELOCITY,
                    velocity=pb.VelocityParameters(
                        subject=subject,
                        window=_duration(window + i),
                        max_count=HUGE,
                        max_amount=Money(amount_minor=HUGE, currency=CURRENCY),
                    ),
                )
            )
    rules += [
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_AMOUNT,
            amount=pb.AmountParameters(thresholds=[Money(amount_minor=HUGE, currency=CURRENCY)]),
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_LOCATION, location=pb.LocationParameters(country_codes=["AQ", "BV", "HM"])
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_IMPOSSIBLE_TRAVEL,
            impossible_travel=pb.ImpossibleTravelParameters(
                max_speed_kmh=20_000, min_distance_km=20_000, lookback=_duration(3600)
            ),
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_DEVICE,
            device=pb.DeviceParameters(max_users_per_device=1000, window=_duration(3600)),
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_BLACKLIST,
            blacklist=pb.BlacklistParameters(
                entry_types=[pb.BLACKLIST_ENTRY_TYPE_IP_RANGE, pb.BLACKLIST_ENTRY_TYPE_CARD_FINGERPRINT]
            ),
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_PATTERN,
            pattern=pb.PatternParameters(
                lookback=_duration(86_400), min_history_count=10, z_score_threshold=100
            ),
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_KYC_LIMIT,
            kyc_limit=pb.KycLimitParameters(
                limits=[
                    pb.KycLevelLimit(
                        kyc_level=0, max_single_amount=Money(amount_minor=HUGE, currency=CURRENCY)
                    )
                ]
            ),
        ),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_VELOCITY,
            velocity=pb.VelocityParameters(
                subject=pb.VELOCITY_SUBJECT_USER, window=_duration(3600 * 24 * 7), max_count=HUGE
            ),
        ),
        pb.FraudRule(rule_type=pb.RULE_TYPE_LOCATION, location=pb.LocationParameters(country_codes=["TF"])),
        pb.FraudRule(
            rule_type=pb.RULE_TYPE_AMOUNT,
            amount=pb.AmountParameters(thresholds=[Money(amount_minor=HUGE, currency="EUR")]),
        ),
    ]
    for i, rule in enumerate(rules):
        rule.name = f"bench: {pb.RuleType.Name(rule.rule_type).lower()} {i}"
        rule.description = "created by bench/fraud_check.py; disabled when it finishes"
        rule.weight = 1
    assert len(rules) == 20
    return rules


def _timestamp() -> Timestamp:
    t = Timestamp()
    t.FromDatetime(datetime.now(UTC))
    return t


def _request(
    run_id: str, users: list[str], cards: list[str], i: int | None = None
) -> pb.CheckTransactionRequest:
    i = random.randrange(len(users)) if i is None else i
    return pb.CheckTransactionRequest(
        reference=f"bench-{run_id}-{uuid.uuid4()}",
        transaction_kind=pb.TRANSACTION_KIND_PAYMENT,
        transaction_id=str(uuid.uuid4()),
        user_id=users[i],
        merchant_id=users[0],
        amount=Money(amount_minor=random.randint(100, 5000), currency=CURRENCY),
        payment_method_kind=pb.PAYMENT_METHOD_KIND_CARD,
        card_fingerprint=cards[i],
        device_fingerprint=f"bench-device-{i}",
        ip_address=f"2001:db8:bec:{i:x}::1",
        geo=pb.GeoLocation(country_code="DE", latitude=52.5 + i / 1000, longitude=13.4),
        email=f"bench{i}@bench.example",
        occur_time=_timestamp(),
        kyc_level=1,
    )


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(rank, len(ordered))) - 1]


def _histogram(text: str) -> dict[float, float]:
    buckets = {}
    for line in text.splitlines():
        if line.startswith("interpay_fraud_check_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return buckets


def _histogram_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the bucket holding the q-th percentile of this run's checks."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    if total <= 0:
        return float("nan")
    for le in sorted(delta):
        if delta[le] >= total * q / 100:
            return le * 1000
    return float("inf")


async def run(profile: Profile | str, seconds: float, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    if isinstance(profile, str):
        profile = PROFILES[profile]
    address = f"{HOST}:{profile.service_port('fraud')}"
    metrics_url = f"http://{HOST}:{profile.metrics_port('fraud')}/metrics"
    secrets_file = json.loads((ROOT / ".data" / profile.name / "secrets.json").read_text())
    dsn = f"postgresql://interpay_fraud:{secrets_file['fraud']}@{HOST}:{profile.postgres_port}/interpay_fraud"
    run_id = uuid.uuid4().hex[:12]
    users = [str(uuid.uuid4()) for _ in range(500)]
    cards = [secrets.token_hex(32) for _ in users]
    latencies: list[float] = []
    errors: dict[str, int] = {}

    # CheckTransaction is internal: the load stands in for the orchestrator's fraud step.
    tls = (
        None
        if plaintext()
        else TlsFiles.in_directory(ROOT / ".data" / profile.name / "certs", "orchestrator")
    )
    channel = (
        grpc.aio.insecure_channel(address)
        if tls is None
        else grpc.aio.secure_channel(address, tls.channel_credentials(), options=channel_options("fraud"))
    )
    async with channel, httpx.AsyncClient(timeout=5) as http:
        fraud = FraudServiceStub(channel)
        created = []
        try:
            for rule in bench_rules():
                reply = await fraud.CreateFraudRule(pb.CreateFraudRuleRequest(fraud_rule=rule))
                created.append(reply.fraud_rule.rule_id)
            # Warm-up: connections, and every user's risk profile in the service's cache.
            for start in range(0, len(users), 50):
                await asyncio.gather(
                    *(
                        fraud.CheckTransaction(_request(f"warm{run_id}", users, cards, i))
                        for i in range(start, min(start + 50, len(users)))
                    )
                )
            before = _histogram((await http.get(metrics_url)).text)
            stop = time.perf_counter() + seconds

            async def client() -> None:
                while time.perf_counter() < stop:
                    started = time.perf_counter()
                    try:
                        await fraud.CheckTransaction(_request(run_id, users, cards), timeout=5)
                    except grpc.aio.AioRpcError as exc:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                        continue
                    latencies.append(time.perf_counter() - started)

            began = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
            after = _histogram((await http.get(metrics_url)).text)
        finally:
            for rule_id in created:
                await fraud.DisableFraudRule(
                    pb.DisableFraudRuleRequest(rule_id=rule_id, reason="benchmark finished")
                )

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT latency_us FROM fraud_checks WHERE reference LIKE %s ORDER BY latency_us",
            (f"bench-{run_id}-%",),
        )
        service_us = [float(r[0]) for r in await cur.fetchall()]
    ordered = sorted(latencies)
    service_p99 = _percentile(service_us, 99) / 1000
    return {
        "rules_active": len(created),
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "checks": len(latencies),
        "errors": errors,
        "throughput_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "client_p50_ms": round(_percentile(ordered, 50) * 1000, 3),
        "client_p99_ms": round(_percentile(ordered, 99) * 1000, 3),
        "service_p50_ms": round(_percentile(service_us, 50) / 1000, 3),
        "service_p99_ms": round(service_p99, 3),
        "service_histogram_p50_ms_le": _histogram_quantile(before, after, 50),
        "service_histogram_p99_ms_le": _histogram_quantile(before, after, 99),
        "target_service_p99_ms": TARGET_SERVICE_P99_MS,
        "meets_target": service_p99 <= TARGET_SERVICE_P99_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="bench", choices=sorted(PROFILES))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.profile, args.seconds, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()
