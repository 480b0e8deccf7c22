"""Stored policies + the policy library -> one signed `groqpolicy` bundle revision.

Packaging (why one bundle): OPA refuses two bundles with overlapping roots, and user policies import
the library (`data.groqpolicy.lib.decision`, `lib.groq`), so they ship *inside* the library bundle,
under `groqpolicy/rules/p_<hex>`. Agents keep their single-bundle config; the in-process evaluator
gets one wasm module holding the library's and every active policy's entrypoints. The revision is
the digest of the library sources, the policy modules and the deployment overlay: the same set of
policies gives the same revision name on every replica.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.opawasm import HostConfig, policy_from_files
from bridge.opawasm.engine import load_check
from bridge.opawasm.errors import WasmError
from controlplane.bundles.artifacts import Built, CompiledBundle, with_overlay
from controlplane.bundles.compiler import Compiler
from controlplane.bundles.definitions import BundleDefinition, load_definitions, revision_for, source_digest
from controlplane.bundles.findings import CompileError, CompileMessage
from controlplane.bundles.publisher import BundlePublisher
from controlplane.policies import rego

RULES_DIR = "_rules"
LIBRARY_BUNDLE = "groqpolicy"
PARSE_FILE = "opa_policy.rego"  # the name the user's text has while `opa parse` reads it alone
CERTIFICATES = "certificates"  # the `.manifest` metadata member holding {rule_id: certificate}
LIBRARY_CERTIFICATES = "library_certificates"  # {policy type: certificate} of the library's own policies

Certificates = Mapping[str, Any] | None
# () -> {policy type: certificate} (controlplane.certification.library), or None: none shipped
LibraryCertificates = Callable[[], Mapping[str, Any]] | None


def module_filename(rule_id: str) -> str:
    return f"{RULES_DIR}/p_{rule_id.replace('-', '')}.rego"


class PolicyBundler:
    def __init__(self, compiler: Compiler, publisher: BundlePublisher, rego_root: Path, bundles_dir: Path,
                 bundle: str = LIBRARY_BUNDLE, library_certificates: LibraryCertificates = None) -> None:
        self.compiler, self.publisher = compiler, publisher
        self.rego_root, self.bundles_dir, self.bundle = rego_root, bundles_dir, bundle
        self.library_certificates = library_certificates
        self.lock = threading.Lock()  # one compile+activate at a time per process

    def _metadata(self, certificates: Certificates) -> dict[str, Any] | None:
        """The `.manifest` metadata: every policy's certificate (the library's are kept by content,
        so this costs a digest of the library's files unless the library changed)."""
        metadata: dict[str, Any] = {CERTIFICATES: dict(certificates)} if certificates else {}
        if self.library_certificates is not None:
            metadata[LIBRARY_CERTIFICATES] = dict(self.library_certificates())
        return metadata or None

    def library(self) -> BundleDefinition:
        for d in load_definitions(self.bundles_dir):
            if d.name == self.bundle:
                return d
        return BundleDefinition(name=self.bundle, sources=["rego"], roots=["groqpolicy", "system/authz"])

    def _tree(self, tmp: Path, definition: BundleDefinition, modules: Mapping[str, str], run_tests: bool | None = None) -> BundleDefinition:
        for src in definition.sources:
            origin, target = self.rego_root / src, tmp / src
            target.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_dir():
                shutil.copytree(origin, target)
            elif origin.exists():
                shutil.copy2(origin, target)
        sources = list(definition.sources)
        if modules:
            for rule_id, text in sorted(modules.items()):
                path = tmp / module_filename(rule_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            sources.append(RULES_DIR)
        return BundleDefinition(name=definition.name, sources=sources, roots=definition.roots,
                                description=definition.description, scope=definition.scope,
                                run_tests=definition.run_tests if run_tests is None else run_tests)

    def revision(self, modules: Mapping[str, str], certificates: Certificates = None) -> str:
        """The revision name `compile(modules, certificates=...)` would produce, without compiling."""
        definition = self.library()
        with tempfile.TemporaryDirectory(prefix="groqpolicy-policies-") as tmp:
            base = Path(tmp)
            d = self._tree(base, definition, modules)
            digest = source_digest([(base / s).resolve() for s in d.sources], base.resolve(), self.publisher.overlay,
                                   self._metadata(certificates))
            return revision_for(d.name, digest)

    def compile(self, modules: Mapping[str, str], focus: str | None = None, run_tests: bool = False,
                certificates: Certificates = None) -> CompiledBundle:
        """Compile the library plus `modules` ({rule_id: module text}); check the wasm module loads.

        Errors in `focus`'s module are reported against `opa_policy` (the user's text). The library's
        own `opa test` run is skipped for policy writes (`run_tests=False`): it ran when the library
        was published, and stored policies carry no tests; `ensure` runs it when the library changes.
        `certificates` ({rule_id: certificate}) go into the `.manifest`'s metadata, so agents show
        what certified the policies they run."""
        return self.finish(self.prepare(modules, focus, run_tests), certificates)

    def check_user_text(self, module: str) -> tuple[str, dict[str, Any]]:
        """The user's text of a policy module alone (`opa parse`): (that text, its AST), or its parse
        errors and reserved names as the user's own (CompileError at `opa_policy` rows)."""
        source = rego.user_source(module)
        try:
            ast = self.compiler.parse(source, PARSE_FILE)
        except CompileError as exc:
            raise rego.relabel(exc, PARSE_FILE, source) from None
        rego.check_names(ast)
        if self.compiler.findings is not None:  # the module keeps the text's rows: its URLs are known now
            self.compiler.findings.remember(module.encode(), ast)
        return source, ast

    def prepare(self, modules: Mapping[str, str], focus: str | None = None, run_tests: bool = False,
                parsed: tuple[str, dict[str, Any]] | None = None) -> Built:
        """`compile` up to the certificates: every `opa` stage and the wasm load check. A write runs
        it beside the policy's certification, whose certificate `finish` then adds; `parsed` is
        `check_user_text(modules[focus])` when the caller has it already."""
        definition = self.library()
        if focus is not None and parsed is None:  # the user's text alone first: its errors are the user's own
            parsed = self.check_user_text(modules[focus])
        source, ast = parsed or ("", None)
        with tempfile.TemporaryDirectory(prefix="groqpolicy-policies-") as tmp:
            base = Path(tmp)
            d = self._tree(base, definition, modules, run_tests=run_tests)
            overlay = self.publisher.overlay
            try:
                return self.compiler.build_tree(d, base=base, after_wasm=lambda files: check_loads(with_overlay(files, overlay)))
            except CompileError as exc:
                raise rego.relabel(exc, module_filename(focus), source, ast) if focus and exc.stage != "load" else exc from None

    def finish(self, built: Built, certificates: Certificates = None) -> CompiledBundle:
        """The bundle of a prepared tree with the policies' certificates in its manifest."""
        return self.compiler.finish(built, overlay=self.publisher.overlay, metadata=self._metadata(certificates))

    def publish(self, compiled: CompiledBundle) -> str:
        definition = self.library()
        with self.lock:
            active = self.publisher.store.get(compiled.name, "wasm")
            if active is None or active[0].revision != compiled.revision:
                self.publisher.publish(compiled, scope=definition.scope)
        return compiled.revision

    def active_revision(self) -> str:
        """The library bundle's active revision ("" when none is)."""
        active = self.publisher.store.get(self.bundle, "wasm")
        return active[0].revision if active is not None else ""

    def is_active(self, modules: Mapping[str, str], certificates: Certificates = None) -> bool:
        """Whether the library + `modules` is the active revision (decided without compiling)."""
        return self.revision(modules, certificates) == self.active_revision()

    def active_archive(self, revision: str, target: str) -> bytes | None:
        """The signed archive of `target` ("rego", "wasm") when `revision` is the active one."""
        active = self.publisher.store.get(self.bundle, target)
        return active[1] if active is not None and active[0].revision == revision else None

    def ensure(self, modules: Mapping[str, str], force: bool = False,
               certificates: Certificates = None) -> tuple[str, bool]:
        """Make the library + `modules` the active revision; (revision, whether it was published)."""
        with self.lock:
            wanted = self.revision(modules, certificates)
            if not force and wanted == self.active_revision():
                return wanted, False
            compiled = self.compile(modules, run_tests=self.library().run_tests, certificates=certificates)
            self.publisher.publish(compiled, scope=self.library().scope)
            return compiled.revision, True

    def publish_definitions(self, definitions: Sequence[BundleDefinition], modules: Mapping[str, str], force: bool = False,
                            certificates: Certificates = None) -> list[str]:
        """`Services.publish_definitions` with stored policies merged into the library bundle."""
        published = []
        others = [d for d in definitions if d.name != self.bundle]
        if len(others) != len(definitions):
            if self.ensure(modules, force=force, certificates=certificates)[1]:
                published.append(self.bundle)
        published.extend(self.publisher.publish_definitions(others, force=force))
        return published

    def artifact(self, compiled: CompiledBundle) -> bytes:
        """The signed wasm bundle of a standalone compile, as stored in the object store."""
        return self.publisher.sign(compiled)["wasm"]


def check_loads(wasm_files: Mapping[str, bytes]) -> None:
    """A module the evaluator cannot load (a builtin it lacks, a bad import or entrypoint, data its
    module cannot parse) must never become the active revision: the evaluator's own load, compiled
    by Winch (`bridge.opawasm.engine.load_check`, ~8x faster than Cranelift), refuses it here, before
    any agent sees the revision; the evaluator's own Cranelift compile follows the publish."""
    try:
        with load_check():
            policy_from_files(wasm_files, pool_size=1, host=HostConfig()).close()
    except WasmError as exc:
        raise CompileError("load", [CompileMessage(stage="load", message=str(exc), code="wasm_load_error")]) from None


def measure(compiled: CompiledBundle, entrypoint: str, input: Any, samples: int = 200, warmup: int = 20) -> tuple[float, float, int]:
    """(median µs, p99 µs, wasm bytes): evaluate the compiled module `samples` times in-process.

    http.send has no transport here, so a model call fails fast (the helper turns it into review):
    the estimate is the policy's own cost, not a model round trip."""
    wasm_size = sum(len(v) for k, v in compiled.wasm_files.items() if k.endswith(".wasm"))
    policy = policy_from_files(compiled.wasm_files, pool_size=1, host=HostConfig())
    try:
        for _ in range(warmup):
            policy.evaluate(entrypoint, input)
        times = []
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            policy.evaluate(entrypoint, input)
            times.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        policy.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return round(statistics.median(times), 2), round(p99, 2), wasm_size
