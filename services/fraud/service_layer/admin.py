"""The admin use cases: rules, thresholds, the blacklist, fraud reports and reading
recorded checks. Every change is one transaction that increments the configuration
version (see configuration.py) and writes an audit record."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from services.framework import paging
from services.framework.db import Database
from services.framework.errors import Aborted, AlreadyExists, FieldViolation, InvalidArgument
from services.fraud.adapters.repository import FraudRepository, params_to_json
from services.fraud.domain.blacklist import InvalidBlacklistValue, normalize
from services.fraud.domain.model import (
    BlacklistEntry,
    BlacklistEntryNotFound,
    BlacklistSource,
    BlacklistType,
    CheckNotFound,
    Decision,
    FraudCheck,
    FraudRule,
    IdempotencyKey,
    RuleChanges,
    RuleNotFound,
    RuleParams,
    RuleState,
    RuleType,
    Thresholds,
)
from services.fraud.service_layer.configuration import Configuration

IDEMPOTENCY_KEY_RETENTION = timedelta(hours=24)


@dataclass(frozen=True)
class NewRule:
    name: str
    description: str
    rule_type: RuleType
    weight: int
    params: RuleParams


@dataclass(frozen=True)
class CheckFilters:
    user_id: uuid.UUID | None = None
    merchant_id: uuid.UUID | None = None
    transaction_id: uuid.UUID | None = None
    decision: Decision | None = None
    start: datetime | None = None
    end: datetime | None = None


def _bad_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not a token this API issued",
        field_violations=[FieldViolation("page_token", "malformed")],
    )


def _keyset(token: str) -> tuple[datetime, uuid.UUID] | None:
    cursor = paging.decode(token)
    if cursor is None:
        return None
    try:
        created, ident = cursor
        return datetime.fromisoformat(created), uuid.UUID(ident)
    except (TypeError, ValueError) as exc:
        raise _bad_token() from exc


def _next_token(items: list[Any], limit: int, created: str, ident: str) -> str:
    if len(items) < limit:
        return ""
    last = items[-1]
    return paging.encode([getattr(last, created).isoformat(), str(getattr(last, ident))])


class Admin:
    def __init__(self, db: Database, config: Configuration) -> None:
        self.db = db
        self.config = config

    async def forget_idempotency_keys(self) -> None:
        async with self.db.transaction() as conn:
            await FraudRepository(conn).purge_idempotency_keys(datetime.now(UTC) - IDEMPOTENCY_KEY_RETENTION)

    # -- rules -----------------------------------------------------------------------------
    async def create_rule(self, new: NewRule, idempotency: IdempotencyKey | None = None) -> FraudRule:
        rule_id = uuid.uuid4()
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            change = await repo.bump_config_version()
            first = await repo.claim_idempotency_key(idempotency, rule_id) if idempotency else None
            if first is not None:  # a retry: the rule the key's first call created, as it is now
                replayed = await repo.get_rule(first)
                assert replayed is not None  # created in the transaction that claimed the key
                return replayed
            rule = await repo.insert_rule(
                rule_id, new.name, new.description, new.rule_type, new.weight, new.params, change
            )
            await repo.audit("CREATE_RULE", "rule", str(rule.rule_id), _rule_details(rule))
        await self.config.refresh()
        return rule

    async def get_rule(self, rule_id: uuid.UUID) -> FraudRule:
        async with self.db.transaction() as conn:
            rule = await FraudRepository(conn).get_rule(rule_id)
        if rule is None:
            raise RuleNotFound(rule_id)
        return rule

    async def list_rules(
        self, rule_type: RuleType | None, state: RuleState | None, page_size: int, token: str
    ) -> tuple[list[FraudRule], str]:
        after = _keyset(token)
        limit = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            rules = await FraudRepository(conn).list_rules(rule_type, state, after, limit)
        return rules, _next_token(rules, limit, "created_at", "rule_id")

    async def update_rule(self, rule_id: uuid.UUID, version: int, changes: RuleChanges) -> FraudRule:
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            change = await repo.bump_config_version()
            rule = await repo.get_rule(rule_id, for_update=True)
            if rule is None:
                raise RuleNotFound(rule_id)
            if rule.version != version:
                raise Aborted(
                    f"fraud rule {rule_id} is at version {rule.version}, not {version}; read it again",
                    metadata={"rule_id": str(rule_id), "current_version": str(rule.version)},
                )
            if changes.params is not None and type(changes.params) is not type(rule.params):
                raise InvalidArgument(
                    f"a {rule.rule_type.value} rule takes {rule.rule_type.value.lower()} parameters",
                    field_violations=[
                        FieldViolation(
                            "update_mask", f"names parameters of another type than {rule.rule_type}"
                        )
                    ],
                )
            updated = dataclasses.replace(
                rule,
                name=changes.name if changes.name is not None else rule.name,
                description=changes.description if changes.description is not None else rule.description,
                weight=changes.weight if changes.weight is not None else rule.weight,
                params=changes.params if changes.params is not None else rule.params,
            )
            saved = await repo.save_rule(updated, change)
            await repo.audit(
                "UPDATE_RULE",
                "rule",
                str(rule_id),
                {"before": _rule_details(rule), "after": _rule_details(saved)},
            )
        await self.config.refresh()
        return saved

    async def set_rule_state(self, rule_id: uuid.UUID, state: RuleState, reason: str) -> FraudRule:
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            # The version first, as in every change, so two changes never lock in opposite
            # orders; an unchanged rule only moves the version on, which is harmless.
            change = await repo.bump_config_version()
            rule = await repo.get_rule(rule_id, for_update=True)
            if rule is None:
                raise RuleNotFound(rule_id)
            if rule.state is state:
                return rule
            saved = await repo.save_rule(dataclasses.replace(rule, state=state), change)
            action = "DISABLE_RULE" if state is RuleState.DISABLED else "ENABLE_RULE"
            await repo.audit(action, "rule", str(rule_id), {"reason": reason, "version": saved.version})
        await self.config.refresh()
        return saved

    # -- thresholds ------------------------------------------------------------------------
    async def thresholds(self) -> Thresholds:
        async with self.db.transaction() as conn:
            return await FraudRepository(conn).thresholds()

    async def update_thresholds(
        self, review: int, decline: int, degraded_minimum: Decision, version: int
    ) -> Thresholds:
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            change = await repo.bump_config_version()
            current = await repo.thresholds(for_update=True)
            if current.version != version:
                raise Aborted(
                    f"the thresholds are at version {current.version}, not {version}; read them again",
                    metadata={"current_version": str(current.version)},
                )
            saved = await repo.save_thresholds(review, decline, degraded_minimum, change)
            await repo.audit(
                "UPDATE_THRESHOLDS",
                "thresholds",
                "thresholds",
                {
                    "before": [current.review, current.decline, current.degraded_minimum.value],
                    "after": [saved.review, saved.decline, saved.degraded_minimum.value],
                },
            )
        await self.config.refresh()
        return saved

    # -- blacklist -------------------------------------------------------------------------
    async def add_entry(
        self,
        entry_type: BlacklistType,
        value: str,
        reason: str,
        expires_at: datetime | None,
        idempotency: IdempotencyKey | None = None,
    ) -> BlacklistEntry:
        try:
            value = normalize(entry_type, value)
        except InvalidBlacklistValue as exc:
            raise InvalidArgument(
                f"value is not a valid {entry_type.value}: {exc}",
                field_violations=[FieldViolation("value", f"not a valid {entry_type.value}")],
            ) from exc
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            change = await repo.bump_config_version()
            entry_id = uuid.uuid4()
            first = await repo.claim_idempotency_key(idempotency, entry_id) if idempotency else None
            if first is not None:  # a retry: the entry the key's first call added
                replayed = await repo.get_entry(first)
                assert replayed is not None  # added in the transaction that claimed the key
                return replayed
            await repo.retire_expired(entry_type, value, change)
            entry = await repo.insert_entry(
                entry_id, entry_type, value, reason, BlacklistSource.MANUAL, None, expires_at, change
            )
            if entry is None:
                existing = await repo.active_entry(entry_type, value)
                raise AlreadyExists(
                    f"{entry_type.value} {value} is already on the blacklist",
                    reason="BLACKLIST_ENTRY_EXISTS",
                    metadata={
                        "entry_type": entry_type.value,
                        "entry_id": str(existing.entry_id) if existing else "",
                    },
                )
            await repo.audit("ADD_BLACKLIST_ENTRY", "blacklist", str(entry.entry_id), _entry_details(entry))
        await self.config.refresh()
        return entry

    async def remove_entry(self, entry_id: uuid.UUID) -> None:
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            change = await repo.bump_config_version()
            removed = await repo.remove_entry(entry_id, change)
            if removed is None:
                if not await repo.entry_exists(entry_id):
                    raise BlacklistEntryNotFound(entry_id)
                return  # removed before: succeeds again
            await repo.audit("REMOVE_BLACKLIST_ENTRY", "blacklist", str(entry_id), _entry_details(removed))
        await self.config.refresh()

    async def list_entries(
        self, entry_type: BlacklistType | None, page_size: int, token: str
    ) -> tuple[list[BlacklistEntry], str]:
        before = _keyset(token)
        limit = paging.page_size(page_size)
        async with self.db.transaction() as conn:
            entries = await FraudRepository(conn).list_entries(entry_type, before, limit)
        return entries, _next_token(entries, limit, "created_at", "entry_id")

    # -- fraud reports ---------------------------------------------------------------------
    async def report_fraud(
        self, payment_id: uuid.UUID, reason: str
    ) -> tuple[FraudCheck, list[BlacklistEntry]]:
        async with self.db.transaction() as conn:
            repo = FraudRepository(conn)
            change = await repo.bump_config_version()
            check = await repo.latest_payment_check(payment_id)
            if check is None:
                raise CheckNotFound(f"no fraud check of payment {payment_id}", payment_id=str(payment_id))
            first_report = not check.confirmed_fraud
            if first_report:
                check = await repo.mark_confirmed_fraud(check.check_id, reason)
            entries = []
            txn = check.transaction
            for entry_type, value in (
                (BlacklistType.CARD_FINGERPRINT, txn.card_fingerprint),
                (BlacklistType.DEVICE, txn.device_fingerprint),
            ):
                if not value:
                    continue
                value = normalize(entry_type, value)
                await repo.retire_expired(entry_type, value, change)
                entry = await repo.insert_entry(
                    uuid.uuid4(),
                    entry_type,
                    value,
                    reason,
                    BlacklistSource.FRAUD_REPORT,
                    payment_id,
                    None,
                    change,
                )
                if entry is None:
                    entry = await repo.active_entry(entry_type, value)
                    assert entry is not None
                else:
                    await repo.audit(
                        "ADD_BLACKLIST_ENTRY", "blacklist", str(entry.entry_id), _entry_details(entry)
                    )
                entries.append(entry)
            if first_report:
                await repo.audit(
                    "REPORT_FRAUD",
                    "payment",
                    str(payment_id),
                    {"check_id": str(check.check_id), "reason": reason},
                )
        await self.config.refresh()
        return check, entries

    # -- checks ----------------------------------------------------------------------------
    async def get_check(self, check_id: uuid.UUID) -> FraudCheck:
        async with self.db.transaction() as conn:
            check = await FraudRepository(conn).get_check(check_id)
        if check is None:
            raise CheckNotFound(f"fraud check {check_id} does not exist", check_id=str(check_id))
        return check

    async def list_checks(
        self, filters: CheckFilters, page_size: int, token: str
    ) -> tuple[list[FraudCheck], str]:
        before = _keyset(token)
        limit = paging.page_size(page_size)
        as_dict = {
            "user_id": filters.user_id,
            "merchant_id": filters.merchant_id,
            "transaction_id": filters.transaction_id,
            "decision": filters.decision.value if filters.decision else None,
            "start": filters.start,
            "end": filters.end,
        }
        async with self.db.transaction() as conn:
            checks = await FraudRepository(conn).list_checks(as_dict, before, limit)
        return checks, _next_token(checks, limit, "created_at", "check_id")


def _rule_details(rule: FraudRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "rule_type": rule.rule_type.value,
        "weight": rule.weight,
        "state": rule.state.value,
        "parameters": params_to_json(rule.params),
        "version": rule.version,
    }


def _entry_details(entry: BlacklistEntry) -> dict[str, Any]:
    return {
        "entry_type": entry.entry_type.value,
        "value": entry.value,
        "reason": entry.reason,
        "source": entry.source.value,
        "payment_id": str(entry.payment_id) if entry.payment_id else None,
    }
