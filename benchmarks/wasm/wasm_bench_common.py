"""Shared inputs for the evaluator benchmarks: the three policies, their data and inputs, and
builders for each contender (same policy source, same data, same input, same entrypoint)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from controlplane.infra.toolchain import opa_binary

CACHE = Path(os.environ.get("GROQPOLICY_BENCH_CACHE", Path(tempfile.gettempdir()) / "groqpolicy-bench"))
OPA_PY_WASM = "opa-py-wasm==1.2.1"

TRIVIAL = """package bench.trivial
import rego.v1

default allow := false
allow if input.user == "alice"
"""

RBAC = """package bench.rbac
import rego.v1

default allow := false
allow if {
  some role in data.bindings[input.user]
  some grant in data.roles[role]
  grant.action == input.action
  grant.resource == input.resource
}
"""

BUILTINS5 = """package bench.builtins
import rego.v1

default allow := false
allow if {
  msg := sprintf("%s:%s", [input.user, input.action])
  crypto.sha256(msg) != ""
  semver.compare(input.version, "2.0.0") < 0
  units.parse_bytes(input.size) <= 10485760
  strings.any_prefix_match(input.path, ["/api/", "/public/"])
}
"""


def rbac_data() -> dict[str, Any]:
    """1,000 bindings (user -> roles) over 50 roles with 4 grants each."""
    roles = {f"role{r}": [{"action": a, "resource": f"res{(r * 7 + i) % 100}"} for i, a in enumerate(["read", "write", "list", "delete"])] for r in range(50)}
    bindings = {f"user{u}": [f"role{u % 50}", f"role{(u * 3) % 50}"] for u in range(1000)}
    return {"roles": roles, "bindings": bindings}


POLICIES: dict[str, dict[str, Any]] = {
    "trivial": {"source": TRIVIAL, "entrypoint": "bench/trivial/allow", "data": None, "input": {"user": "alice"}},
    "rbac1000": {
        "source": RBAC, "entrypoint": "bench/rbac/allow", "data": rbac_data(),
        "input": {"user": "user777", "action": "write", "resource": f"res{(27 * 7 + 1) % 100}"},
    },
    "builtins5": {
        "source": BUILTINS5, "entrypoint": "bench/builtins/allow", "data": None,
        "input": {"user": "alice", "action": "read", "version": "1.4.2", "size": "5MB", "path": "/api/v1/x"},
    },
}


def build(name: str) -> tuple[bytes, bytes]:
    """(policy.wasm, data.json bytes) for a policy, via `opa build -t wasm` (cached by content)."""
    spec = POLICIES[name]
    data = msgspec.json.encode(spec["data"] or {})
    key = hashlib.sha256(spec["source"].encode() + data + spec["entrypoint"].encode()).hexdigest()[:20]
    out = CACHE / f"{name}-{key}.wasm"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            (Path(td) / "p.rego").write_text(spec["source"])
            bundle = Path(td) / "b.tar.gz"
            subprocess.run([str(opa_binary()), "build", "-t", "wasm", "-e", spec["entrypoint"], "-o", str(bundle),
                            str(Path(td) / "p.rego")], check=True, capture_output=True)
            import tarfile

            with tarfile.open(bundle) as tar:
                for m in tar:
                    if m.name.lstrip("/") == "policy.wasm":
                        out.write_bytes(tar.extractfile(m).read())  # type: ignore[union-attr]
    return out.read_bytes(), data


def ensure_opa_py_wasm() -> Path:
    """opa-py-wasm pins wasmtime 46.x while this project runs on the newest wasmtime, so it cannot be
    a project dependency: install it (with its own wasmtime) into an isolated target directory."""
    target = CACHE / "peers" / OPA_PY_WASM.replace("==", "-")
    if not (target / "opapywasm").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), OPA_PY_WASM],
                       check=True, capture_output=True, timeout=600)
    return target


class IsolatedWasmtime:
    """Import opa-py-wasm against its own wasmtime 46 inside this process.

    Both wasmtime packages load their own libwasmtime (ctypes, RTLD_LOCAL: no symbol clash).
    wasmtime-py imports `from wasmtime import ...` lazily inside some functions, so every call into
    the peer runs with `sys.modules["wasmtime"]` pointing at its copy (one dict assignment per call,
    negligible next to the peer's evaluation).
    """

    def __init__(self, target: Path) -> None:
        own = self._take()
        sys.path.insert(0, str(target))
        try:
            import opapywasm

            self.module = opapywasm
        finally:
            sys.path.remove(str(target))
            self.peer = self._take()
            sys.modules.update(own)
        self.own = own["wasmtime"]

    @staticmethod
    def _take() -> dict[str, Any]:
        mods = {k: v for k, v in sys.modules.items() if k == "wasmtime" or k.startswith("wasmtime.")}
        for k in mods:
            del sys.modules[k]
        return mods

    def __enter__(self) -> None:
        sys.modules["wasmtime"] = self.peer["wasmtime"]

    def __exit__(self, *exc: object) -> None:
        sys.modules["wasmtime"] = self.own

    def construct(self, fn: Any, *args: Any, **kw: Any) -> Any:
        own = self._take()
        sys.modules.update(self.peer)
        try:
            return fn(*args, **kw)
        finally:
            self._take()
            sys.modules.update(own)


def peer_builtins() -> dict[str, Any]:
    """Plain-Python versions of the five builtins for opa-py-wasm, which ships only sprintf/json/yaml."""
    import hashlib

    units = {"": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}

    def parse_bytes(s: str) -> int:
        s = s.lower()
        i = len(s.rstrip("abcdefghijklmnopqrstuvwxyz"))
        return int(float(s[:i]) * units[s[i:]])

    def semver_compare(a: str, b: str) -> int:
        x, y = [tuple(int(p) for p in v.split("-")[0].split(".")) for v in (a, b)]
        return (x > y) - (x < y)

    return {
        "crypto.sha256": lambda s: hashlib.sha256(s.encode()).hexdigest(),
        "units.parse_bytes": parse_bytes,
        "strings.any_prefix_match": lambda s, ps: any(s.startswith(p) for p in ([ps] if isinstance(ps, str) else ps)),
        "semver.compare": semver_compare,
    }
