"""SQL for the fraud service, on one connection inside the caller's transaction, and the
JSON form of rule parameters stored in fraud_rules.parameters."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from services.fraud.domain.evidence import email_digest
from services.fraud.domain.model import (
    AmountParams,
    BlacklistEntry,
    BlacklistParams,
    BlacklistSource,
    BlacklistType,
    Decision,
    DeviceParams,
    FiredRule,
    FraudCheck,
    FraudRule,
    IdempotencyKey,
    IdempotencyKeyReused,
    ImpossibleTravelParams,
    KycLevelLimit,
    KycLimitParams,
    LocationParams,
    Money,
    PatternParams,
    PaymentMethodKind,
    RuleParams,
    RuleState,
    RuleType,
    Thresholds,
    Transaction,
    TransactionKind,
    VelocityParams,
    VelocitySubject,
)


# -- rule parameters as JSON --------------------------------------------------------------
def _money(m: Money | None) -> dict[str, Any] | None:
    return None if m is None else {"amount_minor": m.amount_minor, "currency": m.currency}


def _money_from(d: dict[str, Any] | None) -> Money | None:
    return None if d is None else Money(int(d["amount_minor"]), str(d["currency"]))


def params_to_json(p: RuleParams) -> dict[str, Any]:
    if isinstance(p, VelocityParams):
        return {
            "subject": p.subject.value,
            "window_ms": p.window_ms,
            "max_count": p.max_count,
            "max_amount": _money(p.max_amount),
        }
    if isinstance(p, AmountParams):
        return {"thresholds": [_money(m) for m in p.thresholds]}
    if isinstance(p, LocationParams):
        return {
            "country_codes": list(p.country_codes),
            "fire_on_profile_country_mismatch": p.fire_on_profile_country_mismatch,
        }
    if isinstance(p, ImpossibleTravelParams):
        return {
            "max_speed_kmh": p.max_speed_kmh,
            "min_distance_km": p.min_distance_km,
            "lookback_ms": p.lookback_ms,
        }
    if isinstance(p, DeviceParams):
        return {
            "max_users_per_device": p.max_users_per_device,
            "window_ms": p.window_ms,
            "fire_on_missing_fingerprint": p.fire_on_missing_fingerprint,
            "fire_on_new_device_for_user": p.fire_on_new_device_for_user,
        }
    if isinstance(p, BlacklistParams):
        return {"entry_types": [t.value for t in p.entry_types]}
    if isinstance(p, PatternParams):
        return {
            "lookback_ms": p.lookback_ms,
            "min_history_count": p.min_history_count,
            "z_score_threshold": p.z_score_threshold,
        }
    return {
        "limits": [
            {
                "kyc_level": lim.kyc_level,
                "max_single": _money(lim.max_single),
                "max_daily": _money(lim.max_daily),
            }
            for lim in p.limits
        ]
    }


def params_from_json(rule_type: RuleType, d: dict[str, Any]) -> RuleParams:
    if rule_type is RuleType.VELOCITY:
        return VelocityParams(
            VelocitySubject(d["subject"]),
            int(d["window_ms"]),
            int(d["max_count"]),
            _money_from(d["max_amount"]),
        )
    if rule_type is RuleType.AMOUNT:
        return AmountParams(tuple(m for m in map(_money_from, d["thresholds"]) if m is not None))
    # Flags added after 0001 are absent from older rows: absent means off.
    if rule_type is RuleType.LOCATION:
        return LocationParams(
            tuple(d["country_codes"]), bool(d.get("fire_on_profile_country_mismatch", False))
        )
    if rule_type is RuleType.IMPOSSIBLE_TRAVEL:
        return ImpossibleTravelParams(
            int(d["max_speed_kmh"]), int(d["min_distance_km"]), int(d["lookback_ms"])
        )
    if rule_type is RuleType.DEVICE:
        return DeviceParams(
            int(d["max_users_per_device"]),
            int(d["window_ms"]),
            bool(d["fire_on_missing_fingerprint"]),
            bool(d.get("fire_on_new_device_for_user", False)),
        )
    if rule_type is RuleType.BLACKLIST:
        return BlacklistParams(tuple(BlacklistType(t) for t in d["entry_types"]))
    if rule_type is RuleType.PATTERN:
        return PatternParams(
            int(d["lookback_ms"]), int(d["min_history_count"]), float(d["z_score_threshold"])
        )
    limits = []
    for lim in d["limits"]:
        single = _money_from(lim["max_single"])
        assert single is not None
        limits.append(KycLevelLimit(int(lim["kyc_level"]), single, _money_from(lim["max_daily"])))
    return KycLimitParams(tuple(limits))


# -- rows ---------------------------------------------------------------------------------
_RULE_COLUMNS = (
    "rule_id, name, description, rule_type, weight, state, parameters, version, created_at, updated_at"
)
_BLACKLIST_COLUMNS = (
    "entry_id, entry_type, value, reason, source, payment_id, expires_at, created_at, removed_at"
)


def _rule(row: dict[str, Any]) -> FraudRule:
    rule_type = RuleType(row["rule_type"])
    return FraudRule(
        rule_id=row["rule_id"],
        name=row["name"],
        description=row["description"],
        rule_type=rule_type,
        weight=row["weight"],
        state=RuleState(row["state"]),
        params=params_from_json(rule_type, row["parameters"]),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _entry(row: dict[str, Any]) -> BlacklistEntry:
    return BlacklistEntry(
        entry_id=row["entry_id"],
        entry_type=BlacklistType(row["entry_type"]),
        value=row["value"],
        reason=row["reason"],
        source=BlacklistSource(row["source"]),
        payment_id=row["payment_id"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        removed_at=row["removed_at"],
    )


def _thresholds(row: dict[str, Any]) -> Thresholds:
    return Thresholds(
        review=row["review_threshold"],
        decline=row["decline_threshold"],
        degraded_minimum=Decision(row["degraded_minimum_decision"]),
        version=row["version"],
        updated_at=row["updated_at"],
    )


def _fired_to_json(f: FiredRule) -> dict[str, Any]:
    return {
        "rule_id": str(f.rule_id),
        "rule_type": f.rule_type.value,
        "rule_name": f.rule_name,
        "weight": f.weight,
        "confidence": f.confidence,
        "contribution": f.contribution,
        "reason": f.reason,
        "degraded": f.degraded,
    }


def _fired_from_json(d: dict[str, Any]) -> FiredRule:
    return FiredRule(
        rule_id=uuid.UUID(d["rule_id"]),
        rule_type=RuleType(d["rule_type"]),
        rule_name=d["rule_name"],
        weight=d["weight"],
        confidence=d["confidence"],
        contribution=d["contribution"],
        reason=d["reason"],
        degraded=d["degraded"],
    )


def email_sha256(email: str | None) -> str:
    return email_digest(email) if email else ""


_CHECK_COLUMNS = (
    "check_id, reference, request_hash, transaction_kind, transaction_id, user_id, merchant_id, "
    "counterparty_user_id, amount, currency, payment_method_kind, card_fingerprint, "
    "device_fingerprint, ip_address, country_code, latitude, longitude, email_domain, "
    "kyc_level, occurred_at, risk_score, decision, fired_rules, degraded, review_threshold, "
    "decline_threshold, config_version, latency_us, confirmed_fraud, report_reason, reported_at, "
    "created_at"
)


# When a user last used a device: an index-only scan of fraud_checks_user_devices (0004),
# whose predicate the conditions repeat so the planner can use it with any parameters.
_DEVICE_LAST_SEEN = (
    "SELECT max(d.occurred_at) FROM fraud_checks d WHERE d.user_id = %s AND d.device_fingerprint = %s "
    "AND d.user_id IS NOT NULL AND d.device_fingerprint <> '' AND d.decision <> 'DECLINE'"
)


def check_from_row(row: dict[str, Any]) -> FraudCheck:
    txn = Transaction(
        reference=row["reference"],
        kind=TransactionKind(row["transaction_kind"]),
        transaction_id=row["transaction_id"],
        user_id=row["user_id"],
        merchant_id=row["merchant_id"],
        counterparty_user_id=row["counterparty_user_id"],
        amount=Money(row["amount"], row["currency"].strip()),
        method=PaymentMethodKind(row["payment_method_kind"]),
        card_fingerprint=row["card_fingerprint"] or None,
        device_fingerprint=row["device_fingerprint"] or None,
        ip_address=row["ip_address"] or None,
        country_code=row["country_code"] or None,
        latitude=row["latitude"],
        longitude=row["longitude"],
        # Only the domain is kept (see the migration); enough for display and the blacklist.
        email=f"@{row['email_domain']}" if row["email_domain"] else None,
        kyc_level=row["kyc_level"],
        occurred_at=row["occurred_at"],
    )
    return FraudCheck(
        check_id=row["check_id"],
        transaction=txn,
        request_hash=bytes(row["request_hash"]),
        risk_score=row["risk_score"],
        decision=Decision(row["decision"]),
        fired_rules=tuple(_fired_from_json(f) for f in row["fired_rules"]),
        degraded=row["degraded"],
        review_threshold=row["review_threshold"],
        decline_threshold=row["decline_threshold"],
        config_version=row["config_version"],
        latency_us=row["latency_us"],
        created_at=row["created_at"],
        confirmed_fraud=row["confirmed_fraud"],
        reported_at=row["reported_at"],
        report_reason=row["report_reason"],
    )


class FraudRepository:
    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn

    async def _one(self, query: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        cur = await self.conn.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchone()  # type: ignore[no-any-return]

    async def _all(self, query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = await self.conn.execute(query, params)  # type: ignore[arg-type]
        return await cur.fetchall()  # type: ignore[no-any-return]

    # -- configuration versions ------------------------------------------------------------
    async def bump_config_version(self) -> int:
        """Starts a configuration change: the new version, its row locked until commit so
        changes commit in version order."""
        row = await self._one("UPDATE fraud_config SET version = version + 1 RETURNING version")
        assert row is not None
        return int(row["version"])

    async def config_version(self) -> int:
        row = await self._one("SELECT version FROM fraud_config")
        assert row is not None
        return int(row["version"])

    async def claim_idempotency_key(self, key: IdempotencyKey, resource_id: uuid.UUID) -> uuid.UUID | None:
        """Records that `key` creates `resource_id`. None when this call is the first;
        otherwise the id the key's first call created. A concurrent first call holding the
        key makes this one wait on the primary key until it commits or rolls back."""
        row = await self._one(
            "INSERT INTO idempotency_keys (rpc, idempotency_key, request_hash, resource_id) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING resource_id",
            (key.rpc, key.key, key.request_hash, resource_id),
        )
        if row is not None:
            return None
        row = await self._one(
            "SELECT request_hash, resource_id FROM idempotency_keys WHERE rpc = %s AND idempotency_key = %s",
            (key.rpc, key.key),
        )
        assert row is not None  # the conflicting row is committed, so this statement sees it
        if bytes(row["request_hash"]) != key.request_hash:
            raise IdempotencyKeyReused(key)
        return row["resource_id"]  # type: ignore[no-any-return]

    async def purge_idempotency_keys(self, created_before: datetime) -> int:
        cur = await self.conn.execute("DELETE FROM idempotency_keys WHERE created_at < %s", (created_before,))
        return cur.rowcount

    async def get_entry(self, entry_id: uuid.UUID) -> BlacklistEntry | None:
        row = await self._one(f"SELECT {_BLACKLIST_COLUMNS} FROM blacklist WHERE entry_id = %s", (entry_id,))
        return _entry(row) if row else None

    async def audit(self, action: str, target_type: str, target_id: str, details: dict[str, Any]) -> None:
        await self.conn.execute(
            "INSERT INTO fraud_audit_log (action, target_type, target_id, details) VALUES (%s, %s, %s, %s)",
            (action, target_type, target_id, Jsonb(details)),
        )

    # -- rules -----------------------------------------------------------------------------
    async def rules_changed_since(self, version: int) -> list[FraudRule]:
        rows = await self._all(
            f"SELECT {_RULE_COLUMNS} FROM fraud_rules WHERE change_version > %s", (version,)
        )
        return [_rule(r) for r in rows]

    async def insert_rule(
        self,
        rule_id: uuid.UUID,
        name: str,
        description: str,
        rule_type: RuleType,
        weight: int,
        params: RuleParams,
        change: int,
    ) -> FraudRule:
        row = await self._one(
            f"INSERT INTO fraud_rules (rule_id, name, description, rule_type, weight, parameters, "
            f"change_version) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_RULE_COLUMNS}",
            (rule_id, name, description, rule_type.value, weight, Jsonb(params_to_json(params)), change),
        )
        assert row is not None
        return _rule(row)

    async def get_rule(self, rule_id: uuid.UUID, for_update: bool = False) -> FraudRule | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._one(f"SELECT {_RULE_COLUMNS} FROM fraud_rules WHERE rule_id = %s{lock}", (rule_id,))
        return _rule(row) if row else None

    async def save_rule(self, rule: FraudRule, change: int) -> FraudRule:
        row = await self._one(
            f"UPDATE fraud_rules SET name = %s, description = %s, weight = %s, state = %s, "
            f"parameters = %s, version = version + 1, change_version = %s, updated_at = now() "
            f"WHERE rule_id = %s RETURNING {_RULE_COLUMNS}",
            (
                rule.name,
                rule.description,
                rule.weight,
                rule.state.value,
                Jsonb(params_to_json(rule.params)),
                change,
                rule.rule_id,
            ),
        )
        assert row is not None
        return _rule(row)

    async def list_rules(
        self,
        rule_type: RuleType | None,
        state: RuleState | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[FraudRule]:
        where, params = ["true"], []  # type: tuple[list[str], list[Any]]
        if rule_type is not None:
            where.append("rule_type = %s")
            params.append(rule_type.value)
        if state is not None:
            where.append("state = %s")
            params.append(state.value)
        if after is not None:
            where.append("(created_at, rule_id) > (%s, %s)")
            params.extend(after)
        rows = await self._all(
            f"SELECT {_RULE_COLUMNS} FROM fraud_rules WHERE {' AND '.join(where)} "
            f"ORDER BY created_at, rule_id LIMIT %s",
            (*params, limit),
        )
        return [_rule(r) for r in rows]

    # -- thresholds ------------------------------------------------------------------------
    async def thresholds(self, for_update: bool = False) -> Thresholds:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._one(
            "SELECT review_threshold, decline_threshold, degraded_minimum_decision, version, "
            f"updated_at, change_version FROM fraud_thresholds{lock}"
        )
        assert row is not None
        return _thresholds(row)

    async def thresholds_changed_since(self, version: int) -> Thresholds | None:
        row = await self._one(
            "SELECT review_threshold, decline_threshold, degraded_minimum_decision, version, "
            "updated_at FROM fraud_thresholds WHERE change_version > %s",
            (version,),
        )
        return _thresholds(row) if row else None

    async def save_thresholds(
        self, review: int, decline: int, degraded_minimum: Decision, change: int
    ) -> Thresholds:
        row = await self._one(
            "UPDATE fraud_thresholds SET review_threshold = %s, decline_threshold = %s, "
            "degraded_minimum_decision = %s, version = version + 1, change_version = %s, "
            "updated_at = now() RETURNING review_threshold, decline_threshold, "
            "degraded_minimum_decision, version, updated_at",
            (review, decline, degraded_minimum.value, change),
        )
        assert row is not None
        return _thresholds(row)

    # -- blacklist -------------------------------------------------------------------------
    async def blacklist_changed_since(self, version: int) -> list[BlacklistEntry]:
        rows = await self._all(
            f"SELECT {_BLACKLIST_COLUMNS} FROM blacklist WHERE change_version > %s ORDER BY change_version",
            (version,),
        )
        return [_entry(r) for r in rows]

    async def active_entry(self, entry_type: BlacklistType, value: str) -> BlacklistEntry | None:
        row = await self._one(
            f"SELECT {_BLACKLIST_COLUMNS} FROM blacklist "
            f"WHERE entry_type = %s AND value = %s AND removed_at IS NULL",
            (entry_type.value, value),
        )
        return _entry(row) if row else None

    async def retire_expired(self, entry_type: BlacklistType, value: str, change: int) -> None:
        """An expired entry no longer blocks its value from being listed again."""
        await self.conn.execute(
            "UPDATE blacklist SET removed_at = now(), change_version = %s WHERE entry_type = %s "
            "AND value = %s AND removed_at IS NULL AND expires_at <= now()",
            (change, entry_type.value, value),
        )

    async def insert_entry(
        self,
        entry_id: uuid.UUID,
        entry_type: BlacklistType,
        value: str,
        reason: str,
        source: BlacklistSource,
        payment_id: uuid.UUID | None,
        expires_at: datetime | None,
        change: int,
    ) -> BlacklistEntry | None:
        """The new entry, or None when the value is already listed."""
        row = await self._one(
            f"INSERT INTO blacklist (entry_id, entry_type, value, reason, source, payment_id, "
            f"expires_at, change_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (entry_type, value) WHERE removed_at IS NULL DO NOTHING "
            f"RETURNING {_BLACKLIST_COLUMNS}",
            (entry_id, entry_type.value, value, reason, source.value, payment_id, expires_at, change),
        )
        return _entry(row) if row else None

    async def remove_entry(self, entry_id: uuid.UUID, change: int) -> BlacklistEntry | None:
        """The removed entry, or None when there is no such entry or it was removed before."""
        row = await self._one(
            f"UPDATE blacklist SET removed_at = now(), change_version = %s "
            f"WHERE entry_id = %s AND removed_at IS NULL RETURNING {_BLACKLIST_COLUMNS}",
            (change, entry_id),
        )
        return _entry(row) if row else None

    async def entry_exists(self, entry_id: uuid.UUID) -> bool:
        return await self._one("SELECT 1 FROM blacklist WHERE entry_id = %s", (entry_id,)) is not None

    async def list_entries(
        self, entry_type: BlacklistType | None, before: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[BlacklistEntry]:
        where, params = ["removed_at IS NULL"], []  # type: tuple[list[str], list[Any]]
        if entry_type is not None:
            where.append("entry_type = %s")
            params.append(entry_type.value)
        if before is not None:
            where.append("(created_at, entry_id) < (%s, %s)")
            params.extend(before)
        rows = await self._all(
            f"SELECT {_BLACKLIST_COLUMNS} FROM blacklist WHERE {' AND '.join(where)} "
            f"ORDER BY created_at DESC, entry_id DESC LIMIT %s",
            (*params, limit),
        )
        return [_entry(r) for r in rows]

    # -- checks ----------------------------------------------------------------------------
    async def config_version_and_check(
        self, reference: str, device_of: tuple[uuid.UUID, str] | None = None
    ) -> tuple[int, FraudCheck | None, datetime | None]:
        """The configuration version and the check recorded under `reference`, in one trip;
        with `device_of` (a user and a device fingerprint), also when that user last used
        that device (`device_last_seen`), else None."""
        if device_of is None:
            row = await self._one(
                "SELECT f.version AS current_config_version, c.* FROM fraud_config f "
                "LEFT JOIN fraud_checks c ON c.reference = %s",
                (reference,),
            )
        else:
            row = await self._one(
                f"SELECT f.version AS current_config_version, ({_DEVICE_LAST_SEEN}) AS device_last_seen, "
                f"c.* FROM fraud_config f LEFT JOIN fraud_checks c ON c.reference = %s",
                (*device_of, reference),
            )
        assert row is not None
        version = int(row["current_config_version"])
        recorded = check_from_row(row) if row["check_id"] is not None else None
        return version, recorded, row.get("device_last_seen")

    async def device_last_seen(self, user_id: uuid.UUID, device_fingerprint: str) -> datetime | None:
        """The `occur_time` of the user's latest recorded, not declined, check with this
        device; None if there is none."""
        row = await self._one(f"SELECT ({_DEVICE_LAST_SEEN}) AS last_seen", (user_id, device_fingerprint))
        assert row is not None
        return row["last_seen"]  # type: ignore[no-any-return]

    async def insert_check(self, check: FraudCheck, email: str | None) -> FraudCheck | None:
        """Records a check, returning it with its creation time; None when its reference was
        recorded first by another request."""
        t = check.transaction
        row = await self._one(
            "INSERT INTO fraud_checks (check_id, reference, request_hash, transaction_kind, "
            "transaction_id, user_id, merchant_id, counterparty_user_id, amount, currency, "
            "payment_method_kind, card_fingerprint, device_fingerprint, ip_address, country_code, "
            "latitude, longitude, email_domain, email_sha256, kyc_level, occurred_at, risk_score, "
            "decision, fired_rules, degraded, review_threshold, decline_threshold, config_version, "
            "latency_us) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (reference) DO NOTHING RETURNING created_at",
            (
                check.check_id,
                t.reference,
                check.request_hash,
                t.kind.value,
                t.transaction_id,
                t.user_id,
                t.merchant_id,
                t.counterparty_user_id,
                t.amount.amount_minor,
                t.amount.currency,
                t.method.value,
                t.card_fingerprint or "",
                t.device_fingerprint or "",
                t.ip_address or "",
                t.country_code or "",
                t.latitude,
                t.longitude,
                t.email_domain or "",
                email_sha256(email),
                t.kyc_level,
                t.occurred_at,
                check.risk_score,
                check.decision.value,
                Jsonb([_fired_to_json(f) for f in check.fired_rules]),
                check.degraded,
                check.review_threshold,
                check.decline_threshold,
                check.config_version,
                check.latency_us,
            ),
        )
        return dataclasses.replace(check, created_at=row["created_at"]) if row else None

    async def get_check(self, check_id: uuid.UUID) -> FraudCheck | None:
        row = await self._one(f"SELECT {_CHECK_COLUMNS} FROM fraud_checks WHERE check_id = %s", (check_id,))
        return check_from_row(row) if row else None

    async def latest_payment_check(self, payment_id: uuid.UUID) -> FraudCheck | None:
        row = await self._one(
            f"SELECT {_CHECK_COLUMNS} FROM fraud_checks WHERE transaction_id = %s "
            f"AND transaction_kind = 'PAYMENT' ORDER BY created_at DESC, check_id DESC LIMIT 1 FOR UPDATE",
            (payment_id,),
        )
        return check_from_row(row) if row else None

    async def mark_confirmed_fraud(self, check_id: uuid.UUID, reason: str) -> FraudCheck:
        row = await self._one(
            f"UPDATE fraud_checks SET confirmed_fraud = true, reported_at = now(), report_reason = %s "
            f"WHERE check_id = %s RETURNING {_CHECK_COLUMNS}",
            (reason, check_id),
        )
        assert row is not None
        return check_from_row(row)

    async def list_checks(
        self, filters: dict[str, Any], before: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[FraudCheck]:
        where, params = ["true"], []  # type: tuple[list[str], list[Any]]
        for column in ("user_id", "merchant_id", "transaction_id", "decision"):
            if filters.get(column) is not None:
                where.append(f"{column} = %s")
                params.append(filters[column])
        if filters.get("start") is not None:
            where.append("created_at >= %s")
            params.append(filters["start"])
        if filters.get("end") is not None:
            where.append("created_at < %s")
            params.append(filters["end"])
        if before is not None:
            where.append("(created_at, check_id) < (%s, %s)")
            params.extend(before)
        rows = await self._all(
            f"SELECT {_CHECK_COLUMNS} FROM fraud_checks WHERE {' AND '.join(where)} "
            f"ORDER BY created_at DESC, check_id DESC LIMIT %s",
            (*params, limit),
        )
        return [check_from_row(r) for r in rows]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
