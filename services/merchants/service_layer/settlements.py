"""Daily settlements: per merchant and UTC day, the day's settlement lines (captured −
refunded − fees) become one settlement record, and its net one payout.

Exactly once, in the database:
- a settlement is made in one transaction with the lines it takes (each line is marked with
  its settlement, so no line is settled twice) and `UNIQUE (merchant_id, settlement_date)`;
  every settlement of a merchant first locks the merchant's carry row, so a second run (on
  this replica or another) waits and then finds the first one;
- its payout id is uuid5(merchant, day), fixed in that record before the transfers service
  is called, and CreatePayout is idempotent on it: a re-run, or a crash between the record
  and the payout, reaches the same payout and never pays twice.

A settlement takes the lines of its day and any earlier line not settled yet (an event that
arrived after its day had been settled), so no line is ever left behind. A zero or negative
net makes a record without a payout (PAID_OUT: nothing to pay); a negative total is carried
forward and taken from the next settlements before anything is paid out.

The settlement is PENDING until its payout's outcome is known (PAID_OUT when the payout
COMPLETED, FAILED with the payout's failure reason); a job asks the transfers service
again about every PENDING one, creating the payout if a crash prevented it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import date, datetime, timedelta

from interpay.transfers.v1 import transfers_service_pb2 as transfers_pb

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import FieldViolation, InvalidArgument
from services.merchants.adapters.payouts import PayoutRequest, Payouts
from services.merchants.adapters.repository import MerchantRepository
from services.merchants.adapters.settlement_repository import SettlementRepository
from services.merchants.domain.model import MerchantNotFound
from services.merchants.domain.settlement import (
    DayNotEnded,
    NoSettlementWallet,
    Settlement,
    SettlementNotFound,
    SettlementState,
    payout_id_for,
    totals,
)

log = logging.getLogger("interpay.merchants.settlements")
Clock = Callable[[], datetime]


def _destination(account: dict[str, str]) -> transfers_pb.ExternalAccount:
    out = transfers_pb.ExternalAccount(
        holder_name=account["holder_name"], country_code=account["country_code"]
    )
    if account.get("iban"):
        out.iban = account["iban"]
    else:
        out.domestic_account.CopyFrom(
            transfers_pb.DomesticAccount(
                account_number=account.get("account_number", ""),
                routing_number=account.get("routing_number", ""),
            )
        )
    return out


class Settlements:
    def __init__(self, db: Database, payouts: Payouts, clock: Clock, *, allow_open_day: bool = False) -> None:
        self.db = db
        self.payouts = payouts
        self.clock = clock
        # Settling the current UTC day is refused in production (its lines are not all in
        # yet); local meshes allow it so that tests and demos can settle what they just did.
        self.allow_open_day = allow_open_day

    def today(self) -> date:
        return self.clock().date()  # the clock is UTC

    # -- RunSettlement and the daily job ------------------------------------------------------
    async def run(self, day: date, merchant_id: uuid.UUID | None) -> list[Settlement]:
        today = self.today()
        if day > today or (day == today and not self.allow_open_day):
            raise DayNotEnded(day, today)
        if merchant_id is not None:
            async with self.db.transaction() as conn:
                if await MerchantRepository(conn).get_merchant(merchant_id) is None:
                    raise MerchantNotFound(merchant_id)
            merchant_ids = [merchant_id]
        else:
            async with self.db.transaction() as conn:
                merchant_ids = await SettlementRepository(conn).merchants_to_settle(day)
        done = []
        for mid in merchant_ids:
            done.append(await self.pay_out(await self.settle(mid, day)))
        return done

    async def settle_due(self) -> int:
        """The periodic job: settles every day up to yesterday (UTC) that has lines not
        settled yet and no settlement; lines whose own day was settled already (late
        events) go into yesterday's settlement, or the next one. One merchant's failure
        is logged and leaves the others to settle. Returns how many it made."""
        yesterday = self.today() - timedelta(days=1)
        async with self.db.transaction() as conn:
            days = await SettlementRepository(conn).unsettled_days(yesterday)
        due = [(merchant_id, day) for merchant_id, day, settled in days if not settled]
        # Merchants with only late lines: a settlement of a later day would have taken them.
        late = {merchant_id for merchant_id, _, settled in days if settled} - {m for m, _ in due}
        made = 0
        for merchant_id, day in due:
            made += await self._settle_logged(merchant_id, day)
        for merchant_id in late:
            async with self.db.transaction() as conn:
                if await SettlementRepository(conn).for_day(merchant_id, yesterday) is not None:
                    continue  # the next day's settlement takes them
            made += await self._settle_logged(merchant_id, yesterday)
        return made

    async def _settle_logged(self, merchant_id: uuid.UUID, day: date) -> int:
        try:
            await self.pay_out(await self.settle(merchant_id, day))
        except Exception:
            log.exception(
                "settlement failed; retrying at the next run",
                extra={"merchant_id": str(merchant_id), "settlement_date": day.isoformat()},
            )
            return 0
        return 1

    async def settle(self, merchant_id: uuid.UUID, day: date) -> Settlement:
        """The merchant's settlement of `day`: the existing one, or made now in one
        transaction with its lines and the carried deficit."""
        async with self.db.transaction() as conn:
            repo = SettlementRepository(conn)
            carried_in = await repo.lock_merchant_carry(merchant_id)
            existing = await repo.for_day(merchant_id, day)
            if existing is not None:
                return existing
            merchant = await MerchantRepository(conn).get_merchant(merchant_id)
            if merchant is None:
                raise MerchantNotFound(merchant_id)
            lines = await repo.unsettled_lines(merchant_id, day, merchant.settlement_currency)
            sums = totals([line for _, line in lines], carried_in)
            paying = sums.payout > 0
            if paying and merchant.settlement_wallet_id is None:
                raise NoSettlementWallet(merchant_id)
            settlement = await repo.insert(
                uuid.uuid4(),
                merchant_id,
                day,
                merchant.settlement_currency,
                sums,
                SettlementState.PENDING if paying else SettlementState.PAID_OUT,
                payout_id_for(merchant_id, day) if paying else None,
                merchant.settlement_wallet_id if paying else None,
                {k: v for k, v in asdict(merchant.payout_account).items() if v} if paying else None,
                [event_id for event_id, _ in lines],
            )
            await repo.set_carry(merchant_id, sums.carried_out)
            await MerchantRepository(conn).audit(
                merchant_id,
                "SETTLEMENT",
                settlement.settlement_id,
                "SETTLED",
                {
                    "settlement_date": day.isoformat(),
                    "lines": len(lines),
                    "net_minor": sums.net,
                    "carried_in_minor": sums.carried_in,
                    "payout_minor": sums.payout,
                    "carried_out_minor": sums.carried_out,
                    "currency": merchant.settlement_currency,
                    "state": settlement.state.value,
                },
            )
        log.info(
            "settlement made",
            extra={
                "merchant_id": str(merchant_id),
                "settlement_id": str(settlement.settlement_id),
                "settlement_date": day.isoformat(),
                "lines": len(lines),
            },
        )
        return settlement

    async def pay_out(self, settlement: Settlement) -> Settlement:
        """Pays a PENDING settlement's payout (or learns its outcome) and records it; the
        settlement stays PENDING while the outcome is not known."""
        if settlement.state is not SettlementState.PENDING:
            return settlement
        assert settlement.payout_id and settlement.source_wallet_id and settlement.payout_account
        outcome = await self.payouts.pay(
            PayoutRequest(
                payout_id=settlement.payout_id,
                source_wallet_id=settlement.source_wallet_id,
                destination=_destination(settlement.payout_account),
                amount_minor=settlement.payout_minor,
                currency=settlement.currency,
            )
        )
        if outcome is None:
            return settlement
        state = SettlementState.PAID_OUT if outcome.completed else SettlementState.FAILED
        async with self.db.transaction() as conn:
            repo = SettlementRepository(conn)
            if await repo.set_outcome(settlement.settlement_id, state, outcome.failure_reason):
                await MerchantRepository(conn).audit(
                    settlement.merchant_id,
                    "SETTLEMENT",
                    settlement.settlement_id,
                    state.value,
                    {"payout_id": str(settlement.payout_id), "failure_reason": outcome.failure_reason},
                )
            stored = await repo.get(settlement.settlement_id)
        assert stored is not None
        if state is SettlementState.FAILED:
            log.warning(
                "settlement payout failed; the net stays in the settlement wallet",
                extra={
                    "settlement_id": str(settlement.settlement_id),
                    "failure_reason": outcome.failure_reason,
                },
            )
        return stored

    async def resume_payouts(self, batch: int = 50) -> int:
        """The periodic job: asks again about every PENDING settlement's payout."""
        async with self.db.transaction() as conn:
            pending = await SettlementRepository(conn).pending(batch)
        for settlement in pending:
            await self.pay_out(settlement)
        return len(pending)

    # -- reads --------------------------------------------------------------------------
    async def get(self, merchant_id: uuid.UUID, settlement_id: uuid.UUID) -> Settlement:
        async with self.db.transaction() as conn:
            settlement = await SettlementRepository(conn).get(settlement_id)
        if settlement is None or settlement.merchant_id != merchant_id:
            raise SettlementNotFound(merchant_id, settlement_id)
        return settlement

    async def list(
        self, merchant_id: uuid.UUID, page_size: int, page_token: str
    ) -> tuple[list[Settlement], str]:
        scope = f"settlements/{merchant_id}"
        after = _decode(page_token, scope)
        size = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            rows = await SettlementRepository(conn).page(merchant_id, size + 1, after)
        if len(rows) <= size:
            return rows, ""
        last = rows[size - 1]
        return rows[:size], paging.encode([scope, last.settlement_date.isoformat(), str(last.settlement_id)])


def parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidArgument(
            "invalid request: settlement_date is not a day of the calendar",
            field_violations=[FieldViolation("settlement_date", "must be a valid YYYY-MM-DD date")],
        ) from exc


def _decode(token: str, scope: str) -> tuple[date, uuid.UUID] | None:
    cursor = paging.decode(token)
    if cursor is None:
        return None
    try:
        if len(cursor) != 3 or cursor[0] != scope:
            raise ValueError("another listing's token")
        return date.fromisoformat(cursor[1]), uuid.UUID(cursor[2])
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            "page_token belongs to another listing",
            field_violations=[FieldViolation("page_token", "not a token of this listing")],
        ) from exc
