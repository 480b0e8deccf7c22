"""Cases compiled into wasm bundles by the pinned `opa build -t wasm`: many cases per build, each
under its own namespace (`regotext.namespace`), every build cached by the hash of its inputs.

The entrypoint of a case is a generated rule in package `__conformance.<ns>`:

    __conformance_result contains {"x": x, "y": y} if { <the case's query, namespaced> }

so its value is the set of the query's solutions, one object of output vars each: the result set
OPA's runner compares (as a set of binding objects; duplicates collapse on both sides).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.infra.toolchain import OPA_VERSION
from tests.opa_conformance.regotext import namespace
from tests.opa_conformance.suite import Case

GEN_PACKAGE = "__conformance"
GEN_RULE = "__conformance_result"  # no query of the suite has a var of that name
_KEY = re.compile(r"\bc[0-9a-f]{12}\b")
# Where a rule's package path becomes part of a value, a namespace would show in the result: such
# cases are built alone, with their text untouched.
_PATH_IN_VALUE = ("rego.metadata.chain", "rego.metadata.rule")

# OPA's wasm runner registers one builtin of its own (external_test.go, addTestSleepBuiltin), which
# the case time/"time caching" calls; it is declared through the capabilities of every build.
TEST_SLEEP = {"name": "test.sleep", "decl": {"type": "function", "args": [{"type": "string"}],
                                              "result": {"type": "null"}}}


@dataclass
class Prepared:
    """A case turned into build inputs."""

    case: Case
    files: dict[str, str]  # relative path -> Rego source
    entrypoint: str  # slash form, for `opa build -e`
    alone: bool  # must be built on its own, unrewritten


def prepare(case: Case, out_vars: list[str]) -> Prepared:
    ns = case.key
    alone = any(s in case.text for s in _PATH_IN_VALUE)
    rewrite = (lambda text: text) if alone else (lambda text: namespace(text, ns))
    files = {f"{ns}/module-{i}.rego": rewrite(m) for i, m in enumerate(case.modules)}
    row = "{" + ", ".join(f'"{v}": {v}' for v in out_vars) + "}"
    files[f"{GEN_PACKAGE}/{ns}.rego"] = (
        f"package {GEN_PACKAGE}.{ns}\n\n{GEN_RULE} contains {row} if {{\n{rewrite(case.query)}\n}}\n"
    )
    return Prepared(case, files, f"{GEN_PACKAGE}/{ns}/{GEN_RULE}", alone)


class BuildFailed(Exception):
    def __init__(self, message: str, keys: set[str]) -> None:
        super().__init__(message)
        self.message = message
        self.keys = keys  # the namespaces (cases) the error output names


def jsonable(v: Any) -> Any:
    """YAML as JSON, the way OPA's loader converts it: object keys become strings."""
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else _key_text(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


def _key_text(k: Any) -> str:
    if isinstance(k, bool):
        return "true" if k else "false"
    return "null" if k is None else str(k)


def capabilities(opa: Path, cache: Path) -> Path:
    path = cache / f"capabilities-{OPA_VERSION}.json"
    if not path.exists():
        out = subprocess.run([str(opa), "capabilities", "--current"], capture_output=True, text=True, check=True)
        caps = json.loads(out.stdout)
        caps["builtins"].append(TEST_SLEEP)
        _write_atomic(path, json.dumps(caps).encode())
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build(opa: Path, items: list[Prepared], cache: Path, target: str = "wasm") -> bytes:
    """One `opa build -t <target>` of all `items` (cached); BuildFailed names the cases at fault."""
    files: dict[str, str] = {}
    data: dict[str, Any] = {}
    for p in items:
        files.update(p.files)
        if p.case.data is not None:
            if p.alone:
                data = jsonable(p.case.data)
            else:
                data[p.case.key] = jsonable(p.case.data)
    entrypoints = [p.entrypoint for p in items]
    digest = hashlib.sha256(
        json.dumps([OPA_VERSION, target, sorted(files.items()), data, entrypoints], sort_keys=True).encode()
    ).hexdigest()[:24]
    out = cache / "builds" / f"{digest}.tar.gz"
    if out.exists():
        return out.read_bytes()
    caps = capabilities(opa, cache)
    with tempfile.TemporaryDirectory(prefix="conformance-build-") as td:
        src = Path(td) / "src"
        for rel, text in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        (src / "data.json").write_text(json.dumps(data))
        bundle = Path(td) / "bundle.tar.gz"
        args = [str(opa), "build", "-t", target, "--capabilities", str(caps), "-o", str(bundle)]
        for e in entrypoints:
            args += ["-e", e]
        proc = subprocess.run([*args, str(src)], capture_output=True, text=True, check=False, cwd=td)
        if proc.returncode != 0:
            message = (proc.stderr + proc.stdout).replace(f"{src}/", "").strip()
            raise BuildFailed(message, set(_KEY.findall(message)))
        _write_atomic(out, bundle.read_bytes())
    return out.read_bytes()


def bundle_files(bundle: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        for m in tar:
            fh = tar.extractfile(m) if m.isfile() else None
            if fh is not None:
                files["/" + m.name.lstrip("/")] = fh.read()
    return files


def planned_builtins(opa: Path, items: list[Prepared], cache: Path) -> set[str]:
    """The builtins the planner keeps for these entrypoints (`opa build -t plan`): what a wasm
    module built from the same plan calls, natively or on the host. Cheap (no wasm link, no
    compile), so it tells which cases of a batch need a builtin the host lacks."""
    plan = bundle_files(build(opa, items, cache, target="plan")).get("/plan.json")
    if plan is None:
        return set()
    funcs = json.loads(plan).get("static", {}).get("builtin_funcs") or []
    return {f["name"] for f in funcs}
