"""The contracts: lint-clean, guarded against breaking changes, compiled into a gen/ that
is not stale, and consistent with the mesh's declared allowlists."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from interpay.common.v1 import errors_pb2

from services.framework.topology import SERVICES
from tests.conftest import ROOT

BUF = str(ROOT / ".venv" / "bin" / "buf")


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, text=True, capture_output=True, timeout=300)


def test_buf_lint_is_clean() -> None:
    done = _run(BUF, "lint")
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def _breaking(workdir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "current.binpb"
    built = _run(BUF, "build", "--exclude-source-info", "-o", str(image), cwd=workdir)
    assert built.returncode == 0, built.stderr
    return _run(
        BUF,
        "breaking",
        str(image),
        "--against",
        str(ROOT / "proto" / "published.binpb"),
        "--exclude-path",
        "buf",
        "--exclude-path",
        "google",
        cwd=workdir,
    )


def test_no_breaking_change_against_published_contracts(tmp_path: Path) -> None:
    done = _breaking(ROOT, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_json_rename_is_caught_as_breaking(tmp_path: Path) -> None:
    work = tmp_path / "tree"
    for part in ("proto", "third_party"):
        shutil.copytree(ROOT / part, work / part)
    shutil.copy(ROOT / "buf.yaml", work / "buf.yaml")
    contract = work / "proto/interpay/wallet/v1/wallet_service.proto"
    text = contract.read_text()
    renamed = text.replace(
        "message GetWalletRequest {\n  // The wallet's id.\n  string wallet_id = 1",
        "message GetWalletRequest {\n  // The wallet's id.\n  string id = 1",
    )
    assert renamed != text
    contract.write_text(renamed)
    done = _breaking(work, tmp_path)
    assert done.returncode != 0
    assert 'on message "GetWalletRequest" changed option "json_name" from "walletId"' in done.stdout


def _differences(left: Path, right: Path) -> list[str]:
    cmp = filecmp.dircmp(left, right, ignore=["__pycache__"])
    out = [f"{left}/{n}" for n in cmp.left_only + cmp.right_only + cmp.diff_files]
    for sub in cmp.common_dirs:
        out += _differences(left / sub, right / sub)
    return out


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    done = _run(
        "bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path / "gen"), str(tmp_path / "third_party")
    )
    assert done.returncode == 0, done.stderr
    stale = _differences(ROOT / "gen", tmp_path / "gen")
    stale += _differences(ROOT / "third_party" / "proto", tmp_path / "third_party")
    assert not stale, f"gen/ is stale, run `make proto`: {stale}"


def _services() -> dict[str, descriptor_pb2.ServiceDescriptorProto]:
    fds = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gen/descriptors.binpb").read_bytes())
    return {f"{fd.package}.{svc.name}": svc for fd in fds.file for svc in fd.service}


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_internal_rpcs_are_exactly_those_without_http_rules(spec) -> None:  # type: ignore[no-untyped-def]
    service = _services()[spec.grpc_service]
    without_http = {m.name for m in service.method if not m.options.HasExtension(annotations_pb2.http)}
    assert without_http == set(spec.internal_callers), (
        "every internal RPC needs an allowlist entry in topology.py and every public RPC an HTTP rule"
    )


def test_every_error_reason_in_code_is_declared_in_the_contract() -> None:
    declared = {name.removeprefix("ERROR_REASON_") for name in errors_pb2.ErrorReason.keys()}
    pattern = re.compile(r'(?:default_reason\s*=\s*|reason=)"([A-Z_]+)"')
    used = {m for path in (ROOT / "services").rglob("*.py") for m in pattern.findall(path.read_text())}
    used |= {f"{field.upper()}_TAKEN" for field in ("email", "phone")}  # built from the field
    assert used, "the scan found no reasons; has the pattern gone stale?"
    assert used <= declared, f"undeclared reasons: {sorted(used - declared)}"
