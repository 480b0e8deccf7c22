"""Turn Rego sources into bundle artifacts with the real `opa` binary.

Stages, each a separate `opa` invocation so that a failure names its stage:
`opa check --strict` -> `opa test` -> `opa build` (rego target for agents, wasm target for the
in-process evaluator). Errors come back as structured `CompileMessage`s (file, row, col), never as a
stack trace. Signing is not done here: the caller signs the unsigned artifacts (`BundlePublisher.sign`,
with `bridge.opabundle.signing`).

Split by concern: `definitions` (what goes in a bundle, its digest and revision), `findings` (the
messages and errors of a stage), `artifacts` (what the stages produce and the bundle made from it);
this module runs `opa`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from bridge.opabundle.archive import read_bundle
from controlplane.bundles import netcheck, wasmsource
from controlplane.bundles.artifacts import Built, CompiledBundle, finish
from controlplane.bundles.definitions import (
    TEST_FILE_GLOB,
    BundleDefinition,
    revision_for,
    source_files,
    tree_hash,
)
from controlplane.bundles.findings import CompileError, CompileMessage, TestResult, parse_errors
from controlplane.infra.toolchain import opa_binary, opa_run_environment, side_stage

OPA_TIMEOUT_S = 120


class Compiler:
    """Runs `opa` against a source tree; one instance per project root.

    With `bridge_url`, policies are held to the bridge: `opa check` and `opa build` run against OPA
    capabilities whose `allow_net` names only the bridge's host (what `opa eval`/`opa test` enforce),
    and a module whose `http.send` names a constant URL anywhere else is refused at its row and
    column (`netcheck`). OPA itself checks neither at compile time, and an agent (`opa run`) takes no
    capabilities at all, so the constant check is what holds stored policies to the bridge."""

    def __init__(self, project_root: Path, opa: Path | None = None, bridge_url: str | None = None) -> None:
        self.project_root = project_root.resolve()
        self.opa = opa or opa_binary()
        self.bridge_url = bridge_url
        self.findings = netcheck.Findings(bridge_url) if bridge_url is not None else None
        self._capabilities: bytes | None = None
        self._current: str | None = None  # `opa capabilities --current`
        self._wasm_capabilities: bytes | None = None

    def _run(self, args: list[str], cwd: Path, *, side: bool = False) -> subprocess.CompletedProcess[str]:
        """`opa <args>`; `side`: a stage off a write's longest path, at a lower CPU priority."""
        argv = [str(self.opa), *args]
        return subprocess.run(
            side_stage(argv) if side else argv, cwd=cwd, capture_output=True, text=True, timeout=OPA_TIMEOUT_S,
            check=False, env=opa_run_environment(),
        )

    def capabilities(self, directory: Path) -> list[str]:
        """`--capabilities <file>` (written into `directory`) naming the bridge alone in `allow_net`."""
        if self.bridge_url is None:
            return []
        if self._capabilities is None:
            self._capabilities = netcheck.restricted_capabilities(self.current_capabilities(), self.bridge_url)
        path = directory / "capabilities.json"
        path.write_bytes(self._capabilities)
        return ["--capabilities", str(path)]

    def current_capabilities(self) -> str:
        if self._current is None:
            self._current = self._run(["capabilities", "--current"], self.project_root).stdout
        return self._current

    def wasm_capabilities(self, directory: Path) -> list[str]:
        """`capabilities`, plus the pattern builtins' host names (`wasmsource`), for the wasm target."""
        if self._wasm_capabilities is None:
            self._wasm_capabilities = wasmsource.capabilities(self._capabilities or self.current_capabilities())
        path = directory / "capabilities-wasm.json"
        path.write_bytes(self._wasm_capabilities)
        return ["--capabilities", str(path)]

    def check(self, sources: Sequence[Path], cwd: Path | None = None, extra: Sequence[str] = ()) -> None:
        """`opa check --strict`: parse and type errors, raised as CompileError("check")."""
        cwd = cwd or self.project_root
        args = ["check", "--strict", "--format", "json", *extra, *[_rel(s, cwd) for s in sources]]
        proc = self._run(args, cwd, side=True)
        if proc.returncode != 0:
            raise CompileError("check", parse_errors("check", proc.stdout or proc.stderr, cwd))

    def check_network(self, sources: Sequence[Path], cwd: Path) -> None:
        """Refuse `http.send` to a constant URL other than the bridge's (see `netcheck`). Findings are
        kept per module text (`netcheck.Findings`): only a text not seen before is parsed."""
        if self.findings is None:
            return
        found: list[CompileMessage] = []
        for src in sources:
            for f in source_files(src):
                text = f.read_bytes()
                if f.suffix != ".rego" or f.match(TEST_FILE_GLOB) or b"http.send" not in text:
                    continue
                known = self.findings.get(text)
                if known is None:
                    proc = self._run(["parse", "--format", "json", "--json-include", "locations", _rel(f, cwd)], cwd)
                    known = self.findings.put(text, netcheck.violations(proc.stdout, self.findings.bridge_url))
                found += [CompileMessage(stage="check", code=netcheck.CODE, message=v.message, file=_rel(f, cwd),
                                         row=v.row, col=v.col) for v in known]
        if found:
            raise CompileError("check", found)

    def parse(self, text: str, filename: str) -> dict[str, Any]:
        """`opa parse` of one module given as text: its AST with locations (rows and columns of
        `text` itself), or CompileError("check") with the parse errors, located in `filename`."""
        with tempfile.TemporaryDirectory(prefix="groqpolicy-parse-") as tmp:
            cwd = Path(tmp)
            (cwd / filename).write_text(text)
            proc = self._run(["parse", "--format", "json", "--json-include", "locations,-comments", filename], cwd)
        if proc.returncode != 0:
            raise CompileError("check", parse_errors("check", proc.stdout or proc.stderr, cwd))
        try:
            ast = json.loads(proc.stdout)
        except ValueError as exc:
            raise CompileError("check", parse_errors("check", proc.stdout, cwd)) from exc
        return ast if isinstance(ast, dict) else {}

    def test(self, sources: Sequence[Path], cwd: Path | None = None) -> list[TestResult]:
        """`opa test`: every test must pass; results are returned for reporting."""
        cwd = cwd or self.project_root
        proc = self._run(["test", "--format", "json", *[_rel(s, cwd) for s in sources]], cwd)
        try:
            raw = json.loads(proc.stdout or "[]")
        except ValueError as exc:
            raise CompileError("test", parse_errors("test", proc.stderr or proc.stdout, cwd)) from exc
        if isinstance(raw, dict):  # compile errors in test files come back as an errors document
            raise CompileError("test", parse_errors("test", proc.stdout, cwd))
        results = []
        for r in raw:
            loc = r.get("location") or {}
            err = r.get("error")
            results.append(
                TestResult(
                    package=str(r.get("package", "")),
                    name=str(r.get("name", "")),
                    passed=not r.get("fail") and not err,
                    file=str(loc.get("file", "")),
                    row=int(loc.get("row", 0) or 0),
                    error=json.dumps(err) if err else "",
                )
            )
        failed = [r for r in results if not r.passed]
        if failed or proc.returncode != 0:
            messages = [
                CompileMessage(
                    stage="test",
                    message=f"{r.package}.{r.name} failed" + (f": {r.error}" if r.error else ""),
                    code="test_failed",
                    file=r.file,
                    row=r.row,
                )
                for r in failed
            ] or parse_errors("test", proc.stderr or proc.stdout, cwd)
            raise CompileError("test", messages)
        return results

    def build(self, sources: Sequence[Path], target: str, revision: str, cwd: Path | None = None) -> dict[str, bytes]:
        """`opa build -t <target>`; wasm entrypoints come from `entrypoint: true` annotations. The wasm
        target is built from the sources with the pattern builtins routed to the host (`wasmsource`)."""
        cwd = cwd or self.project_root
        with tempfile.TemporaryDirectory(prefix="groqpolicy-build-") as tmp:
            if target == "wasm":
                sources, cwd, caps = self._wasm_inputs(sources, cwd, Path(tmp))
            else:
                caps = self.capabilities(Path(tmp))
            return self._opa_build(sources, target, revision, cwd, caps, Path(tmp) / "bundle.tar.gz")

    def _wasm_inputs(self, sources: Sequence[Path], cwd: Path, tmp: Path) -> tuple[list[Path], Path, list[str]]:
        """The wasm target's sources (pattern builtins routed, written under `tmp`), the directory to
        build in, and its capabilities."""
        routed, routed_cwd = wasmsource.routed_tree(sources, cwd, tmp / "wasm-src")
        return routed, routed_cwd, self.wasm_capabilities(tmp)

    def _opa_build(self, sources: Sequence[Path], target: str, revision: str, cwd: Path, caps: list[str],
                   out: Path) -> dict[str, bytes]:
        args = [
            "build", "-t", target, "--revision", revision, "--ignore", TEST_FILE_GLOB, *caps,
            "-o", str(out), *[_rel(s, cwd) for s in sources],
        ]
        proc = self._run(args, cwd)
        if proc.returncode != 0:
            raise CompileError("build", parse_errors("build", proc.stdout or proc.stderr, cwd))
        return read_bundle(out.read_bytes())

    def compile(self, definition: BundleDefinition, base: Path | None = None, overlay: dict | None = None,
                metadata: dict | None = None) -> CompiledBundle:
        """All stages for one definition; the revision is derived from the sources' digest. `overlay`
        is data merged into `/data.json` after the build (deployment facts such as the bridge URL);
        `metadata` is merged into the `.manifest`'s `metadata` (the policies' certificates, which
        agents serve at `data.system.bundles`). Both count toward the revision."""
        return self.finish(self.build_tree(definition, base), overlay, metadata)

    def build_tree(self, definition: BundleDefinition, base: Path | None = None,
                   after_wasm: Callable[[dict[str, bytes]], None] | None = None) -> Built:
        """Every `opa` stage over the sources at once (`check`, the URL check, `test`, the wasm `build`:
        independent invocations over the same tree, threads waiting on child processes); the rego
        target is made from the wasm target's files (`wasmsource.rego_target`). `after_wasm` (the
        evaluator's load check) runs on the wasm build's files as soon as they exist, beside the
        stages still running. The first failing stage in the order check -> URLs -> test -> build
        -> `after_wasm` is raised, as if they had run one after another."""
        base = (base or self.project_root).resolve()
        sources = [(base / s).resolve() for s in definition.sources]
        missing = [str(s) for s in sources if not s.exists()]
        if missing:
            raise CompileError("check", [CompileMessage(stage="check", message=f"source not found: {m}") for m in missing])
        tree = tree_hash(sources, base)
        revision = revision_for(definition.name, tree.hexdigest())  # the final one is set by `finish`
        with tempfile.TemporaryDirectory(prefix="groqpolicy-caps-") as tmp:
            caps = self.capabilities(Path(tmp))  # before the threads: `opa capabilities` runs once
            self.current_capabilities()
            # the wasm build's sources are prepared before any `opa` starts: ~10 ms of Python alone,
            # ten times that on two cores beside the other stages' `opa` processes, all of it before
            # the longest stage could start
            routed, routed_cwd, wasm_caps = self._wasm_inputs(sources, base, Path(tmp))
            with ThreadPoolExecutor(max_workers=5, thread_name_prefix="opa-stage") as pool:
                # the wasm build first: it is the longest stage, and the load check waits for it
                wasm = pool.submit(self._opa_build, routed, "wasm", revision, routed_cwd, wasm_caps, Path(tmp) / "wasm.tar.gz")
                checks = [pool.submit(self.check, sources, base, caps), pool.submit(self.check_network, sources, base)]
                tests = pool.submit(self.test, sources, base) if definition.run_tests else None
                # not after every stage: `check --strict` and the certification run at a lower
                # priority beside it, and the load check is the longer path to the agents
                loads = pool.submit(lambda: after_wasm(wasm.result())) if after_wasm is not None else None
                pending: list[Future[Any]] = [*checks, wasm, *([tests] if tests else []), *([loads] if loads else [])]
                wait(pending)
        for f in [*checks, tests, wasm, loads]:  # the error of the earliest stage wins
            exc = f.exception() if f is not None else None
            if exc is not None:
                raise exc
        wasm_files = wasm.result()
        rego_files = wasmsource.rego_target(wasm_files, base)
        if rego_files is None:
            rego_files = self.build(sources, "rego", revision, base)
        return Built(definition=definition, tree=tree, rego_files=rego_files, wasm_files=wasm_files,
                     tests=tests.result() if tests is not None else [])

    def finish(self, built: Built, overlay: dict | None = None, metadata: dict | None = None) -> CompiledBundle:
        """`artifacts.finish`: the bundle with the deployment's `overlay` and the manifest's `metadata`."""
        return finish(built, overlay, metadata)

    def compile_source(self, name: str, modules: dict[str, str], data: dict | None = None, run_tests: bool = True) -> CompiledBundle:
        """Compile Rego given as text (the policy API's path): written to a temp tree, then `compile`."""
        with tempfile.TemporaryDirectory(prefix="groqpolicy-src-") as tmp:
            root = Path(tmp)
            src = root / name
            src.mkdir(parents=True)
            for filename, text in modules.items():
                target = (src / filename).resolve()
                if not target.is_relative_to(src):
                    raise CompileError("check", [CompileMessage(stage="check", message=f"{filename}: path escapes the bundle")])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            if data is not None:
                (src / "data.json").write_text(json.dumps(data))
            definition = BundleDefinition(name=name, sources=[name], run_tests=run_tests)
            return self.compile(definition, base=root)

def _rel(path: Path, cwd: Path) -> str:
    """Paths relative to the working dir, so bundle file names do not leak the host's layout."""
    path = path.resolve()
    return str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)
