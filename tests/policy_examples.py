"""The example inputs kept beside each library policy's `opa test` tests (`examples` in
`rego/policies/<type>/policy_test.rego`), read with the real opa: one source for the Rego tests,
the end-to-end tests and the benchmarks. Returns `{policy_type: {example_name: input}}`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bridge.kernel.config import PROJECT_ROOT
from controlplane.infra.toolchain import opa_binary

QUERY = 'json.marshal({t: data.groqpolicy.policies[p].examples | some p; endswith(p, "_test"); t := trim_suffix(p, "_test")})'


def load_policy_examples(opa: Path | None = None) -> dict[str, dict[str, dict]]:
    out = subprocess.run([str(opa or opa_binary()), "eval", "-d", "rego", "--format", "raw", QUERY],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
