"""Run schemathesis against a live control plane and print a JSON report: `{"seen": [...], "failures": [...]}`.

Run as `python -m tests.schemathesis_check BASE_URL PATH_REGEX MAX_EXAMPLES` (token in $GROQPOLICY_TOKEN).
It runs in its own interpreter on purpose: CPython 3.11.7's `ast.parse` can fail with "AST constructor
recursion depth mismatch" once a long pytest session (hypothesis, assertion rewriting) has moved the
recursion bookkeeping, which made the in-process runs flaky. The server under test stays in the test.
"""

from __future__ import annotations

import json
import os
import sys

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance


def check(base_url: str, path_regex: str, max_examples: int, headers: dict[str, str]) -> dict:
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json").include(path_regex=path_regex)
    failures, seen = [], []
    for result in schema.get_all_operations():
        op = result.ok()
        seen.append(f"{op.method.upper()} {op.path}")

        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        @given(case=op.as_strategy())
        def run(case):
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - report every operation's failure together
            failures.append(f"{seen[-1]}: {exc}")
    return {"seen": seen, "failures": failures}


def run_in_subprocess(base_url: str, path_regex: str, max_examples: int, token: str) -> dict:
    """What the tests call: this module in a fresh interpreter, its report parsed."""
    import subprocess

    from tests.conftest import REPO_ROOT

    proc = subprocess.run(
        [sys.executable, "-m", "tests.schemathesis_check", base_url, path_regex, str(max_examples)],
        cwd=REPO_ROOT, env={**os.environ, "GROQPOLICY_TOKEN": token}, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(f"schemathesis run crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    url, regex, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    token = os.environ.get("GROQPOLICY_TOKEN", "")
    report = check(url, regex, n, {"Authorization": f"Bearer {token}"} if token else {})
    print(json.dumps(report))
