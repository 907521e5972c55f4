"""The fraud counters' Lua script against the mesh's real Redis: what a plan writes, and
what its reads answer. Sums are added up inside the script (so a window's members are not
sent back on every check); they must still be exact for any int64 amount, per currency,
and over the read's window only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.framework.topology import Profile
from services.fraud.adapters.counters import Counters, key
from services.fraud.domain.evidence import CounterPlan, Observations, Read, Series, Write

MINUTE_MS = 60_000
INT64_MAX = 2**63 - 1


@pytest.fixture
async def counters(profile: Profile) -> AsyncIterator[Counters]:
    c = Counters(f"redis://127.0.0.1:{profile.redis_port}/0", timeout_seconds=2)
    yield c
    await c.close()


def series() -> Series:
    return Series("velocity", "USER", f"test-counters-{uuid.uuid4()}")


async def append(
    counters: Counters, s: Series, at_ms: int, member: str, reads: tuple[Read, ...] = ()
) -> Observations:
    plan = CounterPlan(at_ms, (Write(s, member, 60 * MINUTE_MS, 10_000),), reads, ())
    observations = await counters.run(plan)
    assert observations is not None
    return observations


async def test_sums_are_exact_per_currency_for_int64_amounts(counters: Counters) -> None:
    s = series()
    at = 1_800_000_000_000
    amounts = [INT64_MAX // 4, INT64_MAX // 4, 1_000_000_001, 999_999_999, 7]
    for i, amount in enumerate(amounts):
        await append(counters, s, at + i, f"ref-{i}|EUR|{amount}")
    await append(counters, s, at + 10, "ref-usd|USD|123456789012")
    eur, usd, gbp = (Read("sum", s, 60 * MINUTE_MS, c) for c in ("EUR", "USD", "GBP"))
    observed = await append(counters, s, at + 11, "ref-last|EUR|5", (eur, usd, gbp))
    assert observed[eur] == sum(amounts) + 5  # above 2^53: a float sum would be off
    assert observed[usd] == 123_456_789_012
    assert observed[gbp] == 0


async def test_sums_and_counts_cover_only_their_window(counters: Counters) -> None:
    s = series()
    at = 1_800_000_000_000
    await append(counters, s, at - 10 * MINUTE_MS, "old|EUR|1000")
    await append(counters, s, at - 5 * MINUTE_MS, "older|EUR|100")
    short_sum, long_sum = Read("sum", s, 6 * MINUTE_MS, "EUR"), Read("sum", s, 11 * MINUTE_MS, "EUR")
    short_count = Read("count", s, 6 * MINUTE_MS)
    observed = await append(counters, s, at, "now|EUR|10", (short_sum, long_sum, short_count))
    assert observed[short_sum] == 110
    assert observed[long_sum] == 1110
    assert observed[short_count] == 2


async def test_a_reference_with_the_separator_is_summed_by_its_own_amount(counters: Counters) -> None:
    s = series()
    total = Read("sum", s, MINUTE_MS, "EUR")
    observed = await append(counters, s, 1_800_000_000_000, "pay|EUR|77|EUR|42", (total,))
    assert observed[total] == 42


async def test_a_member_is_stored_byte_for_byte_and_forgotten(counters: Counters) -> None:
    """The plan reaches the script as JSON: quotes, backslashes, control characters and
    characters outside the BMP in a reference must still be the very member that ZREM
    (forgetting a declined transaction) sends."""
    s = series()
    member = 'ref-"\\\x01\u00e9\U0001f600|EUR|5'
    total = Read("sum", s, MINUTE_MS, "EUR")
    observed = await append(counters, s, 1_800_000_000_000, member, (total,))
    assert observed[total] == 5
    assert await counters.client.zscore(key(s), member.encode()) == 1_800_000_000_000
    await counters.forget([(s, member)])
    assert await counters.client.zcard(key(s)) == 0


async def test_statistics_and_the_previous_location_come_back_from_the_script(counters: Counters) -> None:
    s = series()
    at = 1_800_000_000_000
    stats = Read("stats", s, MINUTE_MS, "EUR", exclude="c|EUR|1000")
    last = Read("last", s, MINUTE_MS, exclude="c|EUR|1000")
    empty_stats, empty_last = Read("stats", series(), MINUTE_MS, "EUR"), Read("last", series(), MINUTE_MS)
    await append(counters, s, at - 2000, "a|EUR|100")
    await append(counters, s, at - 1000, "b|EUR|300")
    observed = await append(counters, s, at, "c|EUR|1000", (stats, last, empty_stats, empty_last))
    assert observed[stats] == (2, 200.0, 100.0)
    assert observed[last] == ("b|EUR|300", at - 1000)
    assert observed[empty_stats] == (0, 0.0, 0.0)
    assert observed[empty_last] is None


async def test_a_plan_without_reads_answers_nothing(counters: Counters) -> None:
    assert await append(counters, series(), 1_800_000_000_000, "a|EUR|1") == {}
