"""The paying user's risk profile from the users service (GetUserRiskProfile), cached in
the process for a short while: a KYC level changes rarely, and a check must not wait on
the users service for every payment. A failure is cached too, briefly, so an unreachable
or not-yet-implemented users service costs one slow call per cool-down, not one per check.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import grpc
from interpay.users.v1 import users_service_pb2 as users_pb
from interpay.users.v1.users_service_pb2_grpc import UserServiceStub

from services.framework.peers import Peers
from services.fraud.domain.model import RiskProfile

log = logging.getLogger("interpay.fraud.users")


@dataclass(frozen=True)
class ProfileLookup:
    profile: RiskProfile | None
    problem: str  # why there is no profile ("" when there is one, or the user is unknown)


class RiskProfiles:
    def __init__(
        self,
        peers: Peers,
        deadline_seconds: float = 0.3,
        ttl_seconds: float = 30.0,
        failure_ttl_seconds: float = 5.0,
        max_entries: int = 100_000,
    ) -> None:
        self.peers = peers
        self.deadline = deadline_seconds
        self.ttl = ttl_seconds
        self.failure_ttl = failure_ttl_seconds
        self.max_entries = max_entries
        self._cache: dict[uuid.UUID, tuple[float, ProfileLookup]] = {}
        self._failure: tuple[float, str] | None = None

    async def lookup(self, user_id: uuid.UUID) -> ProfileLookup:
        now = time.monotonic()
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._failure is not None and self._failure[0] > now:
            return ProfileLookup(None, self._failure[1])
        stub = self.peers.stub("users", UserServiceStub)
        try:
            reply = await stub.GetUserRiskProfile(
                users_pb.GetUserRiskProfileRequest(user_id=str(user_id)), timeout=self.deadline
            )
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.DEADLINE_EXCEEDED
            if code is grpc.StatusCode.NOT_FOUND:
                return self._remember(user_id, now, ProfileLookup(None, ""))
            problem = f"users service answered {code.name} to GetUserRiskProfile"
            log.warning("risk profile unavailable", extra={"peer_code": code.name})
            self._failure = (now + self.failure_ttl, problem)
            return ProfileLookup(None, problem)
        p = reply.risk_profile
        return self._remember(
            user_id, now, ProfileLookup(RiskProfile(p.kyc_level, p.country_code, p.email_domain), "")
        )

    def _remember(self, user_id: uuid.UUID, now: float, lookup: ProfileLookup) -> ProfileLookup:
        if len(self._cache) >= self.max_entries:
            self._cache.clear()  # crude but bounded; profiles are cheap to fetch again
        self._cache[user_id] = (now + self.ttl, lookup)
        return lookup
