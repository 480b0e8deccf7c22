"""OPA's conformance suite (`v1/test/cases/testdata/v1` of the pinned opa, 2,400 cases) through the
in-process evaluator, as OPA's own wasm runner judges it (`tests/opa_conformance/`).

The suite comes from the pinned opa's module source (`go mod download`, through Go's module
cache: nothing is vendored); compiled bundles and modules are cached by content under the tools
dir, so a warm run takes seconds. Every case passes, except those OPA's own wasm runner skips
(its exceptions list, read from the same source) and those `tests/opa_conformance/exclusions.yaml`
lists, each with the failure it must still show and the argument for it: a case that starts
passing must leave the list, and a new failure fails the test.
"""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from controlplane.infra.toolchain import opa_source, tools_dir
from tests.opa_conformance.runner import Report, run_suite
from tests.opa_conformance.suite import EXCLUSIONS, load_exclusions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(opa_bin: Path) -> Report:
    return run_suite(opa_source(), opa_bin, tools_dir() / "cache" / "conformance", jobs=2)


@pytest.mark.timeout(1200)
def test_every_case_passes_or_is_excluded(report: Report, request: pytest.FixtureRequest) -> None:
    exclusions = load_exclusions()
    statuses = collections.Counter(o["status"] for o in report.outcomes.values())
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"\nOPA conformance: {statuses['pass']} passed, {statuses['fail']} failed "
            f"({len(exclusions)} excluded), {statuses['skip']} skipped by OPA's wasm exceptions; "
            f"{len(report.outcomes)} cases in {report.seconds:.1f}s"
        )
    new = {n: o for n, o in report.failures().items() if n not in exclusions}
    lines = [f"NEW FAILURE {n}: {o['kind']}: {o['detail'][:300]}" for n, o in sorted(new.items())]
    for name, ex in sorted(exclusions.items()):
        outcome = report.outcomes.get(name)
        if outcome is None:
            lines.append(f"EXCLUDED BUT NOT IN THE SUITE {name}")
        elif outcome["status"] != "fail":
            lines.append(f"NOW PASSING {name}: remove it from {EXCLUSIONS.name}")
        elif outcome["kind"] != ex.outcome:
            lines.append(f"FAILS DIFFERENTLY {name}: {outcome['kind']} (excluded for {ex.outcome})")
    assert not lines, "\n".join(lines)


def test_every_case_was_run(report: Report) -> None:
    assert len(report.cases) >= 2400, "the suite shrank: is the pinned opa's source complete?"
    assert set(report.outcomes) == {c.name for c in report.cases}


def test_exclusions_are_argued() -> None:
    for name, ex in load_exclusions().items():
        assert ex.outcome, f"{name}: the failure it must show"
        assert len(ex.reason) >= 80, f"{name}: the argument for excluding it is missing or too short"
