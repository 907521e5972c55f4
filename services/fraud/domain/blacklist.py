"""The blacklist as every replica holds it in memory: exact values in one dictionary, IP
networks in one dictionary per (IP version, prefix length), so a lookup costs one probe
per identifier and per distinct prefix length, however long the list grows."""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import datetime

from services.fraud.domain.model import BlacklistEntry, BlacklistType


class InvalidBlacklistValue(ValueError):
    """The value is not of the form its entry type describes."""


def normalize(entry_type: BlacklistType, value: str) -> str:
    """The one spelling of a value, so that equal identifiers are equal strings."""
    try:
        if entry_type is BlacklistType.USER:
            return str(uuid.UUID(value))
        if entry_type is BlacklistType.EMAIL_DOMAIN:
            domain = value.strip().rstrip(".").lower()
            if not domain or "@" in domain or " " in domain:
                raise InvalidBlacklistValue("not a host name")
            return domain
        if entry_type is BlacklistType.IP:
            return ipaddress.ip_address(value).compressed
        if entry_type is BlacklistType.IP_RANGE:
            return ipaddress.ip_network(value, strict=True).compressed
        if entry_type is BlacklistType.CARD_FINGERPRINT:
            return value.lower()
        return value  # DEVICE: an opaque fingerprint, compared exactly
    except ValueError as exc:
        raise InvalidBlacklistValue(str(exc)) from exc


@dataclass(frozen=True)
class Identifier:
    """One identifier a transaction carries, as the blacklist would list it."""

    entry_type: BlacklistType
    value: str
    label: str  # what it is, in words: "card", "receiving user"


@dataclass(frozen=True)
class Match:
    identifier: Identifier
    entry: BlacklistEntry


class BlacklistIndex:
    def __init__(self) -> None:
        self._by_id: dict[uuid.UUID, BlacklistEntry] = {}
        self._exact: dict[tuple[BlacklistType, str], BlacklistEntry] = {}
        # (IP version, prefix length) -> network in canonical form -> entry
        self._networks: dict[tuple[int, int], dict[str, BlacklistEntry]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def apply(self, entry: BlacklistEntry) -> None:
        """Adds, replaces or (for a removed entry) drops one entry."""
        previous = self._by_id.pop(entry.entry_id, None)
        if previous is not None:
            self._discard(previous)
        if entry.removed_at is None:
            self._by_id[entry.entry_id] = entry
            if entry.entry_type is BlacklistType.IP_RANGE:
                network = ipaddress.ip_network(entry.value)
                key = (network.version, network.prefixlen)
                self._networks.setdefault(key, {})[entry.value] = entry
            else:
                self._exact[(entry.entry_type, entry.value)] = entry

    def _discard(self, entry: BlacklistEntry) -> None:
        if entry.entry_type is BlacklistType.IP_RANGE:
            network = ipaddress.ip_network(entry.value)
            bucket = self._networks.get((network.version, network.prefixlen), {})
            if bucket.get(entry.value) is entry:
                del bucket[entry.value]
        elif self._exact.get((entry.entry_type, entry.value)) is entry:
            del self._exact[(entry.entry_type, entry.value)]

    def matches(self, identifiers: list[Identifier], now: datetime) -> list[Match]:
        found = []
        for identifier in identifiers:
            if identifier.entry_type is BlacklistType.IP_RANGE:
                entry = self._network_containing(identifier.value)
            else:
                entry = self._exact.get((identifier.entry_type, identifier.value))
            if entry is not None and entry.applies_at(now):
                found.append(Match(identifier, entry))
        return found

    def _network_containing(self, address: str) -> BlacklistEntry | None:
        ip = ipaddress.ip_address(address)
        for (version, prefixlen), bucket in self._networks.items():
            if version == ip.version and bucket:
                network = ipaddress.ip_network((ip, prefixlen), strict=False).compressed
                if network in bucket:
                    return bucket[network]
        return None
