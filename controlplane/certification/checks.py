"""Run the deterministic certification checks with the real `opa`: the policy's own `opa test`
tests (when it has any), then one `opa eval` of `certify.rego`'s report.

The policy is checked as it ships: the module the bundle carries (its package reassigned to
`groqpolicy.rules.p_<hex>`), next to the library sources, so `import data.groqpolicy.lib...` resolves
exactly as on an agent. A stored policy's tests name the package the author wrote; their references
to it (and their own package) are moved along with the policy, so the tests run against the module
that ships. Probe inputs: an empty input, two synthetic ones with every `input.<path>` the policy
text names set to a string, then to 0, and the tests' `examples` (an object or array of inputs) when they define it.

Two `opa` processes per write at most, never per evaluation: the checks' cost is a write's.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from bridge.kernel.errors import GroqPolicyError, Unprocessable
from controlplane.certification.certificate import CheckResult
from controlplane.infra.toolchain import opa_run_environment, side_stage

CERTIFY_REGO = Path(__file__).with_name("certify.rego")
QUERY = "data.groqpolicy_certification.report"
OPA_TIMEOUT_S = 60
PROBE_TEXT = "certification probe"
MAX_PROBE_PATHS = 64  # a synthetic input names at most this many paths

_PACKAGE = re.compile(r"^(\s*)package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_INPUT_REF = re.compile(r"\binput((?:\.[A-Za-z_]\w*)+)")


class Subject(msgspec.Struct, kw_only=True):
    """What is certified: a stored policy (`rules`, `p_<hex>`) or a library policy (`policies`, its type)."""

    kind: str
    name: str
    module: str = ""  # the module as it ships (stored policies; library policies are in the sources)
    tests: str = ""  # the policy's opa tests as written (stored policies)
    declared: list[str] = []  # principles declared outside the Rego (the record's)
    written_package: str = ""  # the package the author wrote (what the tests refer to)


class Report(msgspec.Struct, kw_only=True):
    checks: list[CheckResult]
    passed: bool
    principles: list[dict[str, Any]] = []  # the declared principles as the constitution states them


def package_of(text: str) -> str:
    """The package a module declares ("" when none)."""
    match = _PACKAGE.search(text)
    return match.group(2) if match else ""


def synthetic_input(text: str, leaf: Any = PROBE_TEXT) -> dict[str, Any]:
    """An input with every `input.<path>` the policy names set to `leaf`: it reaches rules (and
    model calls) that an empty input leaves undefined."""
    probe: dict[str, Any] = {}
    paths = sorted({m.group(1)[1:] for m in _INPUT_REF.finditer(text)}, key=lambda p: (p.count("."), p))
    for path in paths[:MAX_PROBE_PATHS]:
        node = probe
        *parents, name = path.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node.setdefault(name, leaf)
    return probe


def moved_tests(tests: str, policy_package: str, subject_package: str) -> str:
    """The tests with their package and their references to the policy's package moved to where the
    policy ships (`<subject>_test`; `data.<policy package>` -> `data.<subject package>`)."""
    match = _PACKAGE.search(tests)
    if match is not None:
        tests = tests[: match.start()] + f"{match.group(1)}package {subject_package}_test" + tests[match.end():]
    if policy_package:
        last = policy_package.rsplit(".", 1)[-1]
        # an import without an alias names the policy by its last segment: keep that name
        tests = re.sub(r"^(\s*import\s+)data\." + re.escape(policy_package) + r"[ \t]*$",
                       rf"\g<1>data.{subject_package} as {last}", tests, flags=re.MULTILINE)
        tests = re.sub(r"\bdata\." + re.escape(policy_package) + r"(?!\w)", f"data.{subject_package}", tests)
    return tests


class SubjectDoesNotCompile(Unprocessable):
    """The policy (as it ships) does not compile, so no check could run; the compiler says why."""

    code = "rego_compile_error"


class SubjectFailsToEvaluate(Unprocessable):
    """Evaluating the policy on a probe input raised an error (a conflict, a builtin error): the
    certifier reports it as a failed `decisions` check."""

    code = "certification_failed"


class CheckFailed(GroqPolicyError):
    """`opa` could not run the checks at all (a bug or a broken toolchain, not the policy's fault)."""

    status = 500


class PolicyChecks:
    """Runs `certify.rego` over one subject with the real opa, next to the library's sources."""

    def __init__(self, opa: Callable[[], Path], library: Callable[[], Sequence[Path]]) -> None:
        self._opa = opa
        self._library = library

    def _run(self, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        try:
            # beside a write's wasm build, which is on its longest path and this is not
            return subprocess.run(side_stage([str(self._opa()), *args]), cwd=cwd, capture_output=True, text=True,
                                  timeout=OPA_TIMEOUT_S, check=False, env=opa_run_environment())
        except subprocess.TimeoutExpired:  # the policy's cost on its probes (or its tests): its problem
            raise SubjectFailsToEvaluate(f"opa {args[0]} of the policy did not finish within {OPA_TIMEOUT_S} s") from None

    def run(self, subject: Subject) -> Report:
        """The report of every check (blocking: run it in a thread)."""
        library = [str(p) for p in self._library()]
        with tempfile.TemporaryDirectory(prefix="groqpolicy-certify-") as tmp:
            base = Path(tmp)
            tree = base / "subject"
            tree.mkdir()
            sources = [*library]
            if subject.module:
                (tree / "policy.rego").write_text(subject.module)
                sources.append(str(tree))
            package = f"groqpolicy.{subject.kind}.{subject.name}"
            if subject.tests:
                (tree / "tests.rego").write_text(moved_tests(subject.tests, subject.written_package, package))
            tests = self._tests(sources, package, base) if subject.tests or subject.kind == "policies" else None
            if tests is not None and tests["ran"] == 0 and (tree / "tests.rego").exists():
                (tree / "tests.rego").unlink()  # tests that do not compile fail their check, not the others
            probes = [{"name": "empty input", "input": {}}]
            text = subject.module or self._library_text(subject)
            if synthetic_input(text):
                probes.append({"name": "synthetic input", "input": synthetic_input(text)})
                probes.append({"name": "synthetic input (numbers)", "input": synthetic_input(text, 0)})
            doc = {"subject": {"kind": subject.kind, "name": subject.name}, "declared": subject.declared,
                   "probes": probes, "tests": tests or {"declared": False, "ran": 0, "failed": []}}
            (base / "input.json").write_text(json.dumps(doc))
            args = ["eval", "--format", "json"]
            for s in [*sources, str(CERTIFY_REGO)]:
                args += ["-d", s]
            proc = self._run([*args, "-i", str(base / "input.json"), QUERY], base)
        return _report(proc)

    def _library_text(self, subject: Subject) -> str:
        for root in self._library():
            path = root / subject.kind / subject.name / "policy.rego"
            if path.is_file():
                return path.read_text()
        return ""

    def _tests(self, sources: list[str], package: str, cwd: Path) -> dict[str, Any]:
        """`opa test` of the subject's own test package: how many ran, which failed."""
        pattern = "^" + re.escape(f"data.{package}_test.")
        proc = self._run(["test", "--format", "json", *sources, "--run", pattern], cwd)
        try:
            results = json.loads(proc.stdout or "[]")
        except ValueError:
            results = None
        if not isinstance(results, list):  # a compile error in the tests: an errors document
            return {"declared": True, "ran": 0, "failed": [f"the tests do not compile: {_first_error(proc)}"]}
        failed = [f"{r.get('name', '?')}" + (f" ({_error_text(r['error'])})" if r.get("error") else "")
                  for r in results if r.get("fail") or r.get("error")]
        return {"declared": True, "ran": len(results), "failed": failed}


def _error_text(err: Any) -> str:
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


def _first_error(proc: subprocess.CompletedProcess[str]) -> str:
    try:
        errors = json.loads(proc.stdout).get("errors", [])
        err = errors[0]
        loc = err.get("location") or {}
        return f"{Path(str(loc.get('file', ''))).name}:{loc.get('row', 0)}: {err.get('message', '')}"
    except (ValueError, AttributeError, IndexError, TypeError):
        return (proc.stderr or proc.stdout).strip()[:500] or "opa test failed without output"


def _report(proc: subprocess.CompletedProcess[str]) -> Report:
    try:
        doc = json.loads(proc.stdout)
        if isinstance(doc, dict) and doc.get("errors"):
            where = _first_error(proc).replace("policy.rego:", "opa_policy:")
            if any(str(e.get("code", "")).startswith("eval_") for e in doc["errors"] if isinstance(e, dict)):
                raise SubjectFailsToEvaluate(f"evaluating the policy on a probe input failed: {where}")
            raise SubjectDoesNotCompile(f"certification: the policy does not compile: {where}")
        value = doc["result"][0]["expressions"][0]["value"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise CheckFailed(f"certification: opa eval gave no report: {_first_error(proc)}") from None
    return msgspec.convert(value, Report)
