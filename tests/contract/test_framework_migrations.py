"""A service adopts a framework table (the outbox, the consumers' processed events, the
audit trail) by copying the framework's SQL as one of its migrations. The copies must be
the snippet exactly, so a fix to the framework's SQL cannot silently miss a service; the
outbox and the audit trail are in every service."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.framework.topology import SERVICES

ROOT = Path(__file__).resolve().parents[2]
EVERY_SERVICE = frozenset(spec.name for spec in SERVICES)


@pytest.mark.parametrize(
    ("snippet", "marker", "required"),
    [
        ("outbox.sql", "CREATE TABLE outbox", EVERY_SERVICE),
        ("audit.sql", "CREATE TABLE audit_trail", EVERY_SERVICE),
        ("consumer.sql", "CREATE TABLE processed_events", frozenset({"notifications", "merchants"})),
    ],
)
def test_every_copy_is_the_framework_snippet(snippet: str, marker: str, required: frozenset[str]) -> None:
    text = (ROOT / "services" / "framework" / snippet).read_text()
    copies = {
        path: path.parts[-3]
        for path in sorted(ROOT.glob("services/*/migrations/*.sql"))
        if marker in path.read_text()
    }
    assert set(copies.values()) >= required
    assert len(set(copies.values())) == len(copies), "a service copied it twice"
    for path in copies:
        assert path.read_text() == text, f"{path} differs from services/framework/{snippet}"
