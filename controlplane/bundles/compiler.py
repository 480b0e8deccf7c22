"""Turn Rego sources into bundle artifacts with the real `opa` binary.

Stages, each a separate `opa` invocation so that a failure names its stage:
`opa check --strict` -> `opa test` -> `opa build` (rego target for agents, wasm target for the
in-process evaluator). Errors come back as structured `CompileMessage`s (file, row, col), never as a
stack trace. Signing is not done here: the caller signs the unsigned artifacts (`BundlePublisher.sign`,
with `bridge.opabundle.signing`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import msgspec

from bridge.kernel.errors import GroqPolicyError
from bridge.opabundle.archive import read_bundle
from bridge.opabundle.data import merge_data
from controlplane.bundles import netcheck
from controlplane.infra.toolchain import opa_binary

# Test files never ship in a bundle: they would be loaded by agents as ordinary modules.
TEST_FILE_GLOB = "*_test.rego"
OPA_TIMEOUT_S = 120


class CompileMessage(msgspec.Struct, omit_defaults=True):
    """One compiler finding, located in the user's source."""

    stage: str  # check | test | build
    message: str
    code: str = ""
    file: str = ""
    row: int = 0
    col: int = 0

    def __str__(self) -> str:
        where = f"{self.file}:{self.row}:{self.col}: " if self.file else ""
        code = f"{self.code}: " if self.code else ""
        return f"{where}{code}{self.message}"


class CompileError(GroqPolicyError):
    """Rego that did not pass a stage; `messages` carries the structured findings."""

    status = 422

    def __init__(self, stage: str, messages: Sequence[CompileMessage]) -> None:
        self.stage = stage
        self.messages = list(messages)
        summary = "; ".join(str(m) for m in self.messages[:5]) or "no details"
        more = f" (+{len(self.messages) - 5} more)" if len(self.messages) > 5 else ""
        super().__init__(f"opa {stage} failed: {summary}{more}",
                         details={"stage": stage, "messages": [msgspec.structs.asdict(m) for m in self.messages]})


class BundleDefinition(msgspec.Struct, forbid_unknown_fields=True):
    """What goes into one bundle: read from `bundles/<name>.toml`."""

    name: str
    sources: list[str]  # directories or files, relative to the definition file's project root
    roots: list[str] = msgspec.field(default_factory=list)
    description: str = ""
    scope: str | None = None  # signature scope; agents configured with the same scope verify it
    run_tests: bool = True


class TestResult(msgspec.Struct, omit_defaults=True):
    package: str
    name: str
    passed: bool
    file: str = ""
    row: int = 0
    error: str = ""


class Built(msgspec.Struct):
    """A source tree through every `opa` stage, before the overlay and metadata (`Compiler.finish`)."""

    definition: BundleDefinition
    tree: Any  # the running sha256 over the tree's files, continued by `finish`
    rego_files: dict[str, bytes]
    wasm_files: dict[str, bytes]
    tests: list[TestResult]


class CompiledBundle(msgspec.Struct):
    """Unsigned artifacts of one definition, ready for signing."""

    name: str
    revision: str
    source_digest: str
    rego_files: dict[str, bytes]
    wasm_files: dict[str, bytes]
    entrypoints: list[str]
    tests: list[TestResult]


def load_definition(path: Path) -> BundleDefinition:
    try:
        return msgspec.toml.decode(path.read_bytes(), type=BundleDefinition)
    except msgspec.ValidationError as exc:
        raise GroqPolicyError(f"{path}: invalid bundle definition: {exc}") from exc
    except (OSError, msgspec.DecodeError) as exc:
        raise GroqPolicyError(f"{path}: cannot read bundle definition: {exc}") from exc


def load_definitions(bundles_dir: Path) -> list[BundleDefinition]:
    return [load_definition(p) for p in sorted(bundles_dir.glob("*.toml"))]


def _source_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".rego", ".json", ".yaml", ".yml"})


def _tree_hash(sources: Sequence[Path], base: Path) -> Any:
    h = hashlib.sha256()
    for src in sources:
        for f in _source_files(src):
            h.update(str(f.relative_to(base) if f.is_relative_to(base) else f).encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h


def _digest_with(h: Any, overlay: dict | None, metadata: dict | None) -> str:
    if overlay:
        h.update(b"overlay\0" + json.dumps(overlay, sort_keys=True).encode())
    if metadata:
        h.update(b"metadata\0" + json.dumps(metadata, sort_keys=True).encode())
    return str(h.hexdigest())


def source_digest(sources: Sequence[Path], base: Path, overlay: dict | None = None, metadata: dict | None = None) -> str:
    """A digest over every source file's relative path and bytes (and the data overlay and the
    manifest metadata): equal inputs, equal revision."""
    return _digest_with(_tree_hash(sources, base), overlay, metadata)


def revision_for(name: str, digest: str) -> str:
    return f"{name}-{digest[:16]}"


def _parse_errors(stage: str, output: str, base: Path) -> list[CompileMessage]:
    """OPA's `--format json` error document -> messages; any other text becomes one message."""
    try:
        doc = json.loads(output)
    except ValueError:
        text = output.strip() or f"opa {stage} failed without output"
        return [CompileMessage(stage=stage, message=text)]
    errors = doc.get("errors", []) if isinstance(doc, dict) else []
    messages = []
    for err in errors:
        loc = err.get("location") or {}
        file = str(loc.get("file", ""))
        if file:
            path = Path(file)
            if path.is_absolute() and path.is_relative_to(base):
                file = str(path.relative_to(base))
        messages.append(
            CompileMessage(
                stage=stage,
                message=str(err.get("message", "")),
                code=str(err.get("code", "")),
                file=file,
                row=int(loc.get("row", 0) or 0),
                col=int(loc.get("col", 0) or 0),
            )
        )
    return messages or [CompileMessage(stage=stage, message=output.strip()[:2000])]


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

    def _run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.opa), *args], cwd=cwd, capture_output=True, text=True, timeout=OPA_TIMEOUT_S, check=False
        )

    def capabilities(self, directory: Path) -> list[str]:
        """`--capabilities <file>` (written into `directory`) naming the bridge alone in `allow_net`."""
        if self.bridge_url is None:
            return []
        if self._capabilities is None:
            proc = self._run(["capabilities", "--current"], self.project_root)
            self._capabilities = netcheck.restricted_capabilities(proc.stdout, self.bridge_url)
        path = directory / "capabilities.json"
        path.write_bytes(self._capabilities)
        return ["--capabilities", str(path)]

    def check(self, sources: Sequence[Path], cwd: Path | None = None, extra: Sequence[str] = ()) -> None:
        """`opa check --strict`: parse and type errors, raised as CompileError("check")."""
        cwd = cwd or self.project_root
        args = ["check", "--strict", "--format", "json", *extra, *[_rel(s, cwd) for s in sources]]
        proc = self._run(args, cwd)
        if proc.returncode != 0:
            raise CompileError("check", _parse_errors("check", proc.stdout or proc.stderr, cwd))

    def check_network(self, sources: Sequence[Path], cwd: Path) -> None:
        """Refuse `http.send` to a constant URL other than the bridge's (see `netcheck`). Findings are
        kept per module text (`netcheck.Findings`): only a text not seen before is parsed."""
        if self.findings is None:
            return
        found: list[CompileMessage] = []
        for src in sources:
            for f in _source_files(src):
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
            raise CompileError("check", _parse_errors("check", proc.stdout or proc.stderr, cwd))
        try:
            ast = json.loads(proc.stdout)
        except ValueError as exc:
            raise CompileError("check", _parse_errors("check", proc.stdout, cwd)) from exc
        return ast if isinstance(ast, dict) else {}

    def test(self, sources: Sequence[Path], cwd: Path | None = None) -> list[TestResult]:
        """`opa test`: every test must pass; results are returned for reporting."""
        cwd = cwd or self.project_root
        proc = self._run(["test", "--format", "json", *[_rel(s, cwd) for s in sources]], cwd)
        try:
            raw = json.loads(proc.stdout or "[]")
        except ValueError as exc:
            raise CompileError("test", _parse_errors("test", proc.stderr or proc.stdout, cwd)) from exc
        if isinstance(raw, dict):  # compile errors in test files come back as an errors document
            raise CompileError("test", _parse_errors("test", proc.stdout, cwd))
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
            ] or _parse_errors("test", proc.stderr or proc.stdout, cwd)
            raise CompileError("test", messages)
        return results

    def build(self, sources: Sequence[Path], target: str, revision: str, cwd: Path | None = None) -> dict[str, bytes]:
        """`opa build -t <target>`; wasm entrypoints come from `entrypoint: true` annotations."""
        cwd = cwd or self.project_root
        with tempfile.TemporaryDirectory(prefix="groqpolicy-build-") as tmp:
            out = Path(tmp) / "bundle.tar.gz"
            args = [
                "build", "-t", target, "--revision", revision, "--ignore", TEST_FILE_GLOB, *self.capabilities(Path(tmp)),
                "-o", str(out), *[_rel(s, cwd) for s in sources],
            ]
            proc = self._run(args, cwd)
            if proc.returncode != 0:
                raise CompileError("build", _parse_errors("build", proc.stdout or proc.stderr, cwd))
            return read_bundle(out.read_bytes())

    def compile(self, definition: BundleDefinition, base: Path | None = None, overlay: dict | None = None,
                metadata: dict | None = None) -> CompiledBundle:
        """All stages for one definition; the revision is derived from the sources' digest. `overlay`
        is data merged into `/data.json` after the build (deployment facts such as the bridge URL);
        `metadata` is merged into the `.manifest`'s `metadata` (the policies' certificates, which
        agents serve at `data.system.bundles`). Both count toward the revision."""
        return self.finish(self.build_tree(definition, base), overlay, metadata)

    def build_tree(self, definition: BundleDefinition, base: Path | None = None) -> Built:
        """Every `opa` stage over the sources at once (`check`, the URL check, `test`, both `build`s:
        independent invocations over the same tree, threads waiting on child processes). The first
        failing stage in the order check -> URLs -> test -> build rego -> build wasm is raised, as if
        they had run one after another."""
        base = (base or self.project_root).resolve()
        sources = [(base / s).resolve() for s in definition.sources]
        missing = [str(s) for s in sources if not s.exists()]
        if missing:
            raise CompileError("check", [CompileMessage(stage="check", message=f"source not found: {m}") for m in missing])
        tree = _tree_hash(sources, base)
        revision = revision_for(definition.name, tree.hexdigest())  # the final one is set by `finish`
        with tempfile.TemporaryDirectory(prefix="groqpolicy-caps-") as tmp:
            caps = self.capabilities(Path(tmp))  # before the threads: `opa capabilities` runs once
            with ThreadPoolExecutor(max_workers=5, thread_name_prefix="opa-stage") as pool:
                checks = [pool.submit(self.check, sources, base, caps), pool.submit(self.check_network, sources, base)]
                tests = pool.submit(self.test, sources, base) if definition.run_tests else None
                builds = [pool.submit(self.build, sources, target, revision, base) for target in ("rego", "wasm")]
                pending: list[Future[Any]] = [*checks, *builds, *([tests] if tests else [])]
                wait(pending)
        for f in [*checks, tests, *builds]:  # the error of the earliest stage wins
            exc = f.exception() if f is not None else None
            if exc is not None:
                raise exc
        return Built(definition=definition, tree=tree, rego_files=builds[0].result(), wasm_files=builds[1].result(),
                     tests=tests.result() if tests is not None else [])

    def finish(self, built: Built, overlay: dict | None = None, metadata: dict | None = None) -> CompiledBundle:
        """The bundle of a built tree with the deployment's `overlay` and the manifest's `metadata`
        (see `compile`): no `opa` runs here, so `metadata` known only after the build (a policy's
        certificate) costs nothing."""
        digest = _digest_with(built.tree.copy(), overlay, metadata)
        definition, revision = built.definition, revision_for(built.definition.name, digest)
        rego_files, wasm_files = built.rego_files, built.wasm_files
        manifest = json.loads(wasm_files.get("/.manifest", b"{}"))
        entrypoints = [w["entrypoint"] for w in manifest.get("wasm", [])]
        if overlay:
            rego_files, wasm_files = _with_data(rego_files, overlay), _with_data(wasm_files, overlay)
        if definition.roots or metadata or digest != built.tree.hexdigest():  # else opa's manifest is the bundle's
            rego_files = _with_manifest(rego_files, roots=definition.roots, name=definition.name, metadata=metadata, revision=revision)
            wasm_files = _with_manifest(wasm_files, roots=definition.roots, name=definition.name, metadata=metadata, revision=revision)
        return CompiledBundle(name=definition.name, revision=revision, source_digest=digest, rego_files=rego_files,
                              wasm_files=wasm_files, entrypoints=entrypoints, tests=built.tests)

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


def _with_data(files: dict[str, bytes], overlay: dict) -> dict[str, bytes]:
    data = json.loads(files.get("/data.json", b"{}"))
    return {**files, "/data.json": json.dumps(merge_data(data, overlay, overwrite=True), separators=(",", ":"), sort_keys=True).encode()}


def _with_manifest(files: dict[str, bytes], *, roots: list[str], name: str, metadata: dict | None = None,
                   revision: str = "") -> dict[str, bytes]:
    manifest = json.loads(files.get("/.manifest", b"{}"))
    if revision:
        manifest["revision"] = revision
    if roots:
        manifest["roots"] = roots
    if roots or metadata:
        manifest.setdefault("metadata", {}).update({**(metadata or {}), "bundle": name})
    return {**files, "/.manifest": json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()}
