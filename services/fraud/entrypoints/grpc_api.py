"""The FraudService servicer: proto in -> use case -> proto out. Nothing else lives here."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC
from typing import Any

from google.protobuf.duration_pb2 import Duration
from interpay.common.v1.money_pb2 import Money as MoneyPb
from interpay.fraud.v1 import fraud_service_pb2 as pb

from services.framework.errors import FieldViolation, InvalidArgument
from services.framework.idempotency import for_request as idempotency_key
from services.framework.proto import timestamp
from services.fraud.domain.model import (
    AmountParams,
    BlacklistEntry,
    BlacklistParams,
    BlacklistType,
    Decision,
    DeviceParams,
    FraudCheck,
    FraudRule,
    ImpossibleTravelParams,
    KycLevelLimit,
    KycLimitParams,
    LocationParams,
    Money,
    PatternParams,
    PaymentMethodKind,
    RuleChanges,
    RuleParams,
    RuleState,
    RuleType,
    Thresholds,
    Transaction,
    TransactionKind,
    VelocityParams,
    VelocitySubject,
)
from services.fraud.service_layer.admin import Admin, CheckFilters, NewRule
from services.fraud.service_layer.checks import CheckRequest, FraudChecks


def _enum_map(enum_cls: Any, pb_enum: Any, prefix: str) -> tuple[dict[Any, Any], dict[Any, Any]]:
    to_domain = {pb_enum.Value(f"{prefix}{member.value}"): member for member in enum_cls}
    return to_domain, {v: k for k, v in to_domain.items()}


_RULE_TYPES, _RULE_TYPES_PB = _enum_map(RuleType, pb.RuleType, "RULE_TYPE_")
_DECISIONS, _DECISIONS_PB = _enum_map(Decision, pb.Decision, "DECISION_")
_KINDS, _KINDS_PB = _enum_map(TransactionKind, pb.TransactionKind, "TRANSACTION_KIND_")
_METHODS, _METHODS_PB = _enum_map(PaymentMethodKind, pb.PaymentMethodKind, "PAYMENT_METHOD_KIND_")
_ENTRY_TYPES, _ENTRY_TYPES_PB = _enum_map(BlacklistType, pb.BlacklistEntryType, "BLACKLIST_ENTRY_TYPE_")
_SUBJECTS, _SUBJECTS_PB = _enum_map(VelocitySubject, pb.VelocitySubject, "VELOCITY_SUBJECT_")
_STATES, _STATES_PB = _enum_map(RuleState, pb.FraudRule.State, "STATE_")
PARAMETER_FIELDS = {
    RuleType.VELOCITY: "velocity",
    RuleType.AMOUNT: "amount",
    RuleType.LOCATION: "location",
    RuleType.IMPOSSIBLE_TRAVEL: "impossible_travel",
    RuleType.DEVICE: "device",
    RuleType.BLACKLIST: "blacklist",
    RuleType.PATTERN: "pattern",
    RuleType.KYC_LIMIT: "kyc_limit",
}


# -- proto -> domain ----------------------------------------------------------------------
def _money(m: MoneyPb) -> Money:
    return Money(m.amount_minor, m.currency)


def _ms(d: Duration) -> int:
    return int(d.ToMilliseconds())


def params_from_pb(rule: pb.FraudRule, field: str) -> RuleParams:
    if field == "velocity":
        v = rule.velocity
        return VelocityParams(
            _SUBJECTS[v.subject],
            _ms(v.window),
            v.max_count,
            _money(v.max_amount) if v.HasField("max_amount") else None,
        )
    if field == "amount":
        return AmountParams(tuple(_money(m) for m in rule.amount.thresholds))
    if field == "location":
        return LocationParams(
            tuple(rule.location.country_codes), rule.location.fire_on_profile_country_mismatch
        )
    if field == "impossible_travel":
        t = rule.impossible_travel
        return ImpossibleTravelParams(t.max_speed_kmh, t.min_distance_km, _ms(t.lookback))
    if field == "device":
        d = rule.device
        return DeviceParams(
            d.max_users_per_device,
            _ms(d.window),
            d.fire_on_missing_fingerprint,
            d.fire_on_new_device_for_user,
        )
    if field == "blacklist":
        return BlacklistParams(tuple(_ENTRY_TYPES[t] for t in rule.blacklist.entry_types))
    if field == "pattern":
        p = rule.pattern
        return PatternParams(_ms(p.lookback), p.min_history_count, p.z_score_threshold)
    limits: list[KycLevelLimit] = []
    for lim in rule.kyc_limit.limits:
        key = (lim.kyc_level, lim.max_single_amount.currency)
        if any((x.kyc_level, x.max_single.currency) == key for x in limits):
            raise InvalidArgument(
                f"kyc_limit names KYC level {key[0]} in {key[1]} twice",
                field_violations=[
                    FieldViolation("fraud_rule.kyc_limit.limits", "one limit per level and currency")
                ],
            )
        limits.append(
            KycLevelLimit(
                lim.kyc_level,
                _money(lim.max_single_amount),
                _money(lim.max_daily_amount) if lim.HasField("max_daily_amount") else None,
            )
        )
    return KycLimitParams(tuple(limits))


def transaction_from_pb(r: pb.CheckTransactionRequest) -> Transaction:
    geo = r.geo if r.HasField("geo") else None
    located = geo is not None and geo.HasField("latitude")
    return Transaction(
        reference=r.reference,
        kind=_KINDS[r.transaction_kind],
        transaction_id=uuid.UUID(r.transaction_id),
        user_id=uuid.UUID(r.user_id) if r.user_id else None,
        merchant_id=uuid.UUID(r.merchant_id) if r.merchant_id else None,
        counterparty_user_id=uuid.UUID(r.counterparty_user_id) if r.counterparty_user_id else None,
        amount=_money(r.amount),
        method=_METHODS[r.payment_method_kind],
        card_fingerprint=r.card_fingerprint or None,
        device_fingerprint=r.device_fingerprint or None,
        ip_address=r.ip_address or None,
        country_code=(geo.country_code or None) if geo is not None else None,
        latitude=geo.latitude if located and geo is not None else None,
        longitude=geo.longitude if located and geo is not None else None,
        email=r.email or None,
        kyc_level=r.kyc_level,
        occurred_at=r.occur_time.ToDatetime(tzinfo=UTC),
    )


# -- domain -> proto ----------------------------------------------------------------------
def _money_pb(m: Money) -> MoneyPb:
    return MoneyPb(amount_minor=m.amount_minor, currency=m.currency)


def _duration_pb(ms: int) -> Duration:
    d = Duration()
    d.FromMilliseconds(ms)
    return d


def rule_pb(rule: FraudRule) -> pb.FraudRule:
    out = pb.FraudRule(
        rule_id=str(rule.rule_id),
        name=rule.name,
        description=rule.description,
        rule_type=_RULE_TYPES_PB[rule.rule_type],
        weight=rule.weight,
        state=_STATES_PB[rule.state],
        version=rule.version,
        create_time=timestamp(rule.created_at),
        update_time=timestamp(rule.updated_at),
    )
    p = rule.params
    if isinstance(p, VelocityParams):
        out.velocity.CopyFrom(
            pb.VelocityParameters(
                subject=_SUBJECTS_PB[p.subject], window=_duration_pb(p.window_ms), max_count=p.max_count
            )
        )
        if p.max_amount is not None:
            out.velocity.max_amount.CopyFrom(_money_pb(p.max_amount))
    elif isinstance(p, AmountParams):
        out.amount.CopyFrom(pb.AmountParameters(thresholds=[_money_pb(m) for m in p.thresholds]))
    elif isinstance(p, LocationParams):
        out.location.CopyFrom(
            pb.LocationParameters(
                country_codes=list(p.country_codes),
                fire_on_profile_country_mismatch=p.fire_on_profile_country_mismatch,
            )
        )
    elif isinstance(p, ImpossibleTravelParams):
        out.impossible_travel.CopyFrom(
            pb.ImpossibleTravelParameters(
                max_speed_kmh=p.max_speed_kmh,
                min_distance_km=p.min_distance_km,
                lookback=_duration_pb(p.lookback_ms),
            )
        )
    elif isinstance(p, DeviceParams):
        out.device.CopyFrom(
            pb.DeviceParameters(
                max_users_per_device=p.max_users_per_device,
                window=_duration_pb(p.window_ms),
                fire_on_missing_fingerprint=p.fire_on_missing_fingerprint,
                fire_on_new_device_for_user=p.fire_on_new_device_for_user,
            )
        )
    elif isinstance(p, BlacklistParams):
        out.blacklist.CopyFrom(
            pb.BlacklistParameters(entry_types=[_ENTRY_TYPES_PB[t] for t in p.entry_types])
        )
    elif isinstance(p, PatternParams):
        out.pattern.CopyFrom(
            pb.PatternParameters(
                lookback=_duration_pb(p.lookback_ms),
                min_history_count=p.min_history_count,
                z_score_threshold=p.z_score_threshold,
            )
        )
    else:
        out.kyc_limit.CopyFrom(
            pb.KycLimitParameters(
                limits=[
                    pb.KycLevelLimit(
                        kyc_level=lim.kyc_level,
                        max_single_amount=_money_pb(lim.max_single),
                        max_daily_amount=_money_pb(lim.max_daily) if lim.max_daily else None,
                    )
                    for lim in p.limits
                ]
            )
        )
    return out


def check_pb(c: FraudCheck) -> pb.FraudCheck:
    t = c.transaction
    out = pb.FraudCheck(
        check_id=str(c.check_id),
        reference=t.reference,
        transaction_kind=_KINDS_PB[t.kind],
        transaction_id=str(t.transaction_id),
        user_id=str(t.user_id) if t.user_id else "",
        merchant_id=str(t.merchant_id) if t.merchant_id else "",
        amount=_money_pb(t.amount),
        payment_method_kind=_METHODS_PB[t.method],
        card_fingerprint=t.card_fingerprint or "",
        device_fingerprint=t.device_fingerprint or "",
        ip_address=t.ip_address or "",
        country_code=t.country_code or "",
        risk_score=c.risk_score,
        decision=_DECISIONS_PB[c.decision],
        fired_rules=[
            pb.FiredRule(
                rule_id=str(f.rule_id),
                rule_type=_RULE_TYPES_PB[f.rule_type],
                rule_name=f.rule_name,
                weight=f.weight,
                confidence=f.confidence,
                contribution=f.contribution,
                reason=f.reason,
                degraded=f.degraded,
            )
            for f in c.fired_rules
        ],
        degraded=c.degraded,
        review_threshold=c.review_threshold,
        decline_threshold=c.decline_threshold,
        confirmed_fraud=c.confirmed_fraud,
        occur_time=timestamp(t.occurred_at),
    )
    if c.created_at is not None:
        out.create_time.CopyFrom(timestamp(c.created_at))
    if c.reported_at is not None:
        out.report_time.CopyFrom(timestamp(c.reported_at))
    return out


def entry_pb(e: BlacklistEntry) -> pb.BlacklistEntry:
    out = pb.BlacklistEntry(
        entry_id=str(e.entry_id),
        entry_type=_ENTRY_TYPES_PB[e.entry_type],
        value=e.value,
        reason=e.reason,
        source=pb.BlacklistEntry.Source.Value(f"SOURCE_{e.source.value}"),
        payment_id=str(e.payment_id) if e.payment_id else "",
        create_time=timestamp(e.created_at),
    )
    if e.expires_at is not None:
        out.expire_time.CopyFrom(timestamp(e.expires_at))
    return out


def thresholds_pb(t: Thresholds) -> pb.FraudThresholds:
    out = pb.FraudThresholds(
        review_threshold=t.review,
        decline_threshold=t.decline,
        degraded_minimum_decision=_DECISIONS_PB[t.degraded_minimum],
        version=t.version,
    )
    if t.updated_at is not None:
        out.update_time.CopyFrom(timestamp(t.updated_at))
    return out


def rule_changes(request: pb.UpdateFraudRuleRequest, rule_type: RuleType) -> RuleChanges:
    paths = set(request.update_mask.paths)
    r = request.fraud_rule
    params = None
    for path in paths & set(PARAMETER_FIELDS.values()):
        if path != PARAMETER_FIELDS[rule_type]:
            raise InvalidArgument(
                f"a {rule_type.value} rule's parameters are '{PARAMETER_FIELDS[rule_type]}', not '{path}'",
                metadata={"rule_type": rule_type.value},
                field_violations=[
                    FieldViolation("update_mask", f"{path} is not the parameter field of the rule's type")
                ],
            )
        if not r.HasField(path):  # type: ignore[arg-type]
            raise InvalidArgument(
                f"update_mask names {path} but fraud_rule.{path} is not set",
                field_violations=[FieldViolation(f"fraud_rule.{path}", "required when named in update_mask")],
            )
        params = params_from_pb(r, path)
    if "name" in paths and not r.name:
        raise InvalidArgument(
            "fraud_rule.name must not be empty",
            field_violations=[FieldViolation("fraud_rule.name", "must not be empty")],
        )
    return RuleChanges(
        name=r.name if "name" in paths else None,
        description=r.description if "description" in paths else None,
        weight=r.weight if "weight" in paths else None,
        params=params,
    )


class FraudServicer:
    def __init__(self, checks: FraudChecks, admin: Admin) -> None:
        self.checks = checks
        self.admin = admin

    async def CheckTransaction(
        self, request: pb.CheckTransactionRequest, context: Any
    ) -> pb.CheckTransactionResponse:
        received = time.perf_counter()  # the check's latency counts from here
        check = await self.checks.check(
            CheckRequest(
                transaction=transaction_from_pb(request),
                email=request.email or None,
                request_hash=hashlib.sha256(request.SerializeToString(deterministic=True)).digest(),
                received=received,
            )
        )
        return pb.CheckTransactionResponse(fraud_check=check_pb(check))

    async def CreateFraudRule(
        self, request: pb.CreateFraudRuleRequest, context: Any
    ) -> pb.CreateFraudRuleResponse:
        r = request.fraud_rule
        rule_type = _RULE_TYPES[r.rule_type]
        rule = await self.admin.create_rule(
            NewRule(
                r.name, r.description, rule_type, r.weight, params_from_pb(r, PARAMETER_FIELDS[rule_type])
            ),
            idempotency_key(context, "CreateFraudRule", request),
        )
        return pb.CreateFraudRuleResponse(fraud_rule=rule_pb(rule))

    async def GetFraudRule(self, request: pb.GetFraudRuleRequest, context: Any) -> pb.GetFraudRuleResponse:
        return pb.GetFraudRuleResponse(
            fraud_rule=rule_pb(await self.admin.get_rule(uuid.UUID(request.rule_id)))
        )

    async def ListFraudRules(
        self, request: pb.ListFraudRulesRequest, context: Any
    ) -> pb.ListFraudRulesResponse:
        rules, token = await self.admin.list_rules(
            _RULE_TYPES.get(request.rule_type),
            _STATES.get(request.state),
            request.page_size,
            request.page_token,
        )
        return pb.ListFraudRulesResponse(fraud_rules=[rule_pb(r) for r in rules], next_page_token=token)

    async def UpdateFraudRule(
        self, request: pb.UpdateFraudRuleRequest, context: Any
    ) -> pb.UpdateFraudRuleResponse:
        rule_id = uuid.UUID(request.rule_id)
        current = await self.admin.get_rule(rule_id)  # the type is immutable: safe to read first
        rule = await self.admin.update_rule(
            rule_id, request.version, rule_changes(request, current.rule_type)
        )
        return pb.UpdateFraudRuleResponse(fraud_rule=rule_pb(rule))

    async def DisableFraudRule(
        self, request: pb.DisableFraudRuleRequest, context: Any
    ) -> pb.DisableFraudRuleResponse:
        rule = await self.admin.set_rule_state(uuid.UUID(request.rule_id), RuleState.DISABLED, request.reason)
        return pb.DisableFraudRuleResponse(fraud_rule=rule_pb(rule))

    async def EnableFraudRule(
        self, request: pb.EnableFraudRuleRequest, context: Any
    ) -> pb.EnableFraudRuleResponse:
        rule = await self.admin.set_rule_state(uuid.UUID(request.rule_id), RuleState.ENABLED, "")
        return pb.EnableFraudRuleResponse(fraud_rule=rule_pb(rule))

    async def GetFraudCheck(self, request: pb.GetFraudCheckRequest, context: Any) -> pb.GetFraudCheckResponse:
        return pb.GetFraudCheckResponse(
            fraud_check=check_pb(await self.admin.get_check(uuid.UUID(request.check_id)))
        )

    async def ListFraudChecks(
        self, request: pb.ListFraudChecksRequest, context: Any
    ) -> pb.ListFraudChecksResponse:
        filters = CheckFilters(
            user_id=uuid.UUID(request.user_id) if request.user_id else None,
            merchant_id=uuid.UUID(request.merchant_id) if request.merchant_id else None,
            transaction_id=uuid.UUID(request.transaction_id) if request.transaction_id else None,
            decision=_DECISIONS.get(request.decision),
            start=request.create_time_start.ToDatetime(tzinfo=UTC)
            if request.HasField("create_time_start")
            else None,
            end=request.create_time_end.ToDatetime(tzinfo=UTC)
            if request.HasField("create_time_end")
            else None,
        )
        checks, token = await self.admin.list_checks(filters, request.page_size, request.page_token)
        return pb.ListFraudChecksResponse(fraud_checks=[check_pb(c) for c in checks], next_page_token=token)

    async def AddBlacklistEntry(
        self, request: pb.AddBlacklistEntryRequest, context: Any
    ) -> pb.AddBlacklistEntryResponse:
        entry = await self.admin.add_entry(
            _ENTRY_TYPES[request.entry_type],
            request.value,
            request.reason,
            request.expire_time.ToDatetime(tzinfo=UTC) if request.HasField("expire_time") else None,
            idempotency_key(context, "AddBlacklistEntry", request),
        )
        return pb.AddBlacklistEntryResponse(blacklist_entry=entry_pb(entry))

    async def RemoveBlacklistEntry(
        self, request: pb.RemoveBlacklistEntryRequest, context: Any
    ) -> pb.RemoveBlacklistEntryResponse:
        await self.admin.remove_entry(uuid.UUID(request.entry_id))
        return pb.RemoveBlacklistEntryResponse()

    async def ListBlacklistEntries(
        self, request: pb.ListBlacklistEntriesRequest, context: Any
    ) -> pb.ListBlacklistEntriesResponse:
        entries, token = await self.admin.list_entries(
            _ENTRY_TYPES.get(request.entry_type), request.page_size, request.page_token
        )
        return pb.ListBlacklistEntriesResponse(
            blacklist_entries=[entry_pb(e) for e in entries], next_page_token=token
        )

    async def ReportFraud(self, request: pb.ReportFraudRequest, context: Any) -> pb.ReportFraudResponse:
        check, entries = await self.admin.report_fraud(uuid.UUID(request.payment_id), request.reason)
        return pb.ReportFraudResponse(
            fraud_check=check_pb(check), blacklist_entries=[entry_pb(e) for e in entries]
        )

    async def GetFraudThresholds(
        self, request: pb.GetFraudThresholdsRequest, context: Any
    ) -> pb.GetFraudThresholdsResponse:
        return pb.GetFraudThresholdsResponse(fraud_thresholds=thresholds_pb(await self.admin.thresholds()))

    async def UpdateFraudThresholds(
        self, request: pb.UpdateFraudThresholdsRequest, context: Any
    ) -> pb.UpdateFraudThresholdsResponse:
        thresholds = await self.admin.update_thresholds(
            request.review_threshold,
            request.decline_threshold,
            _DECISIONS.get(request.degraded_minimum_decision, Decision.APPROVE),
            request.version,
        )
        return pb.UpdateFraudThresholdsResponse(fraud_thresholds=thresholds_pb(thresholds))
