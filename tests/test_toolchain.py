"""The pinned toolchain is found and reports the versions the product is built against."""

from __future__ import annotations

import json
import subprocess

from bridge.kernel.errors import ToolchainError
from controlplane.bundles.compiler import Compiler
from controlplane.certification.checks import PolicyChecks
from controlplane.infra import toolchain


def test_opa_binary_is_pinned_version(opa_bin):
    assert toolchain.opa_version_of(opa_bin) == toolchain.OPA_VERSION


def test_wrong_version_opa_bin_is_ignored(tmp_path, monkeypatch):
    fake = tmp_path / "opa"
    fake.write_text("#!/bin/sh\necho 'Version: 0.1.0'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("OPA_BIN", str(fake))
    found = toolchain.find_opa()
    assert found != fake


def test_missing_go_and_opa_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("OPA_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("GROQPOLICY_TOOLS_DIR", str(tmp_path / "tools"))
    monkeypatch.setattr(toolchain.shutil, "which", lambda _name: None)
    monkeypatch.setattr(toolchain.Path, "is_file", lambda self: False)
    try:
        toolchain.install_opa()
    except ToolchainError as exc:
        assert "install Go" in str(exc) and "OPA_BIN" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("install_opa must fail without go")


def test_nats_server_from_venv_runs(nats_bin):
    out = subprocess.run([str(nats_bin), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("nats-server: v")


def _gc_settings_seen_by(run) -> tuple[str, str]:
    """GOGC and GOMEMLIMIT as the opa process itself reports them (`opa.runtime().env`)."""
    proc = run(["eval", "--format", "raw", '[object.get(opa.runtime().env, k, null) | some k in ["GOGC", "GOMEMLIMIT"]]'])
    assert proc.returncode == 0, proc.stderr
    gogc, limit = json.loads(proc.stdout)
    return gogc, limit


def test_short_opa_runs_hold_the_collector_off_unless_the_operator_says_otherwise(opa_bin, tmp_path, monkeypatch):
    """The compiler's and the certifier's opa runs (a write pays four side by side) collect only near
    the memory limit; a GOGC or GOMEMLIMIT the operator set reaches opa unchanged."""
    monkeypatch.delenv("GOGC", raising=False)
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    compiler = Compiler(tmp_path, opa=opa_bin)
    checks = PolicyChecks(lambda: opa_bin, lambda: [])
    for run in (lambda args: compiler._run(args, tmp_path), lambda args: checks._run(args, tmp_path)):
        assert _gc_settings_seen_by(run) == ("off", toolchain.OPA_RUN_MEMORY_LIMIT)
    monkeypatch.setenv("GOGC", "50")
    assert _gc_settings_seen_by(lambda args: compiler._run(args, tmp_path))[0] == "50"
    monkeypatch.delenv("GOGC")
    monkeypatch.setenv("GOMEMLIMIT", "2GiB")
    assert _gc_settings_seen_by(lambda args: checks._run(args, tmp_path)) == (None, "2GiB")


def test_a_side_stage_runs_at_its_lower_cpu_priority():
    """`side_stage` (a write's `opa` runs off its longest path): the process itself runs at
    SIDE_STAGE_NICE above this one's nice value (field 19 of /proc/<pid>/stat)."""
    ours = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[16])
    proc = subprocess.run(toolchain.side_stage(["cat", "/proc/self/stat"]), capture_output=True, text=True, check=True)
    assert int(proc.stdout.rsplit(")", 1)[1].split()[16]) == min(19, ours + toolchain.SIDE_STAGE_NICE)
