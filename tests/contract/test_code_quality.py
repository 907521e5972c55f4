"""The habits the style guide asks for, kept by the suite: ruff clean and formatted,
mypy clean (with the generated stubs for gen/)."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT

BIN = ROOT / ".venv" / "bin"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, text=True, capture_output=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = _run(str(BIN / "ruff"), "check", "services", "scripts", "tests", "bench")
    assert done.returncode == 0, done.stdout


def test_code_is_formatted() -> None:
    done = _run(str(BIN / "ruff"), "format", "--check", "services", "scripts", "tests", "bench")
    assert done.returncode == 0, done.stdout


def test_mypy_finds_nothing() -> None:
    done = _run(str(BIN / "mypy"))
    assert done.returncode == 0, done.stdout
