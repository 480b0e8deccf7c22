"""The suite's cases and OPA's list of cases its wasm runner skips, read from the pinned opa's module
source (`controlplane.infra.toolchain.opa_source`), plus this project's own exclusions file."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CASES_SUBDIR = "v1/test/cases/testdata/v1"
# the cases OPA's own wasm runner skips (internal/wasm/sdk/test/e2e), with OPA's reasons
WASM_EXCEPTIONS = "internal/wasm/sdk/test/e2e/exceptions.yaml"
EXCLUSIONS = Path(__file__).with_name("exclusions.yaml")


class Yaml12Loader(yaml.SafeLoader):
    """OPA reads its cases with go-yaml v3, i.e. YAML 1.2's core schema: `on`, `yes` and plain
    timestamps stay strings. PyYAML resolves YAML 1.1, which would turn the key `on:` into true."""


Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     "-+0123456789."),
):
    Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))


def _int12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 16) if text.startswith("0x") else int(text, 10)


def _float12(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float("nan") if text == ".nan" else float(text)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _int12)
Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _float12)


@dataclass
class Case:
    note: str
    file: str  # relative to the suite directory
    index: int  # its position in that file (notes are not unique: 123 repeat)
    query: str
    modules: list[str] = field(default_factory=list)
    data: dict[str, Any] | None = None
    input: Any = None
    input_term: str | None = None
    want_result: list[dict[str, Any]] | None = None
    want_error: str | None = None
    want_error_code: str | None = None
    strict_error: bool = False
    sort_bindings: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"{self.file}#{self.index}: {self.note}"

    @property
    def key(self) -> str:
        """A content id; also the namespace the case's documents live under in a shared build."""
        doc = json.dumps([self.file, self.index, self.raw], sort_keys=True, default=str)
        return "c" + hashlib.sha256(doc.encode()).hexdigest()[:12]

    @property
    def expects_error(self) -> bool:
        return self.want_error is not None or self.want_error_code is not None

    @property
    def text(self) -> str:
        return self.query + "\n" + "\n".join(self.modules)


def load_cases(suite: Path) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(suite.rglob("*.yaml")):
        doc = yaml.load(path.read_text(), Loader=Yaml12Loader) or {}
        rel = str(path.relative_to(suite))
        for i, c in enumerate(doc.get("cases") or []):
            cases.append(Case(
                note=c["note"], file=rel, index=i, query=c["query"], modules=list(c.get("modules") or []),
                data=c.get("data"), input=c.get("input"), input_term=c.get("input_term"),
                want_result=c.get("want_result"), want_error=c.get("want_error"),
                want_error_code=c.get("want_error_code"), strict_error=bool(c.get("strict_error")),
                sort_bindings=bool(c.get("sort_bindings")), raw=c,
            ))
    return cases


def load_wasm_exceptions(source: Path) -> dict[str, str]:
    doc = yaml.load((source / WASM_EXCEPTIONS).read_text(), Loader=Yaml12Loader) or {}
    return {str(k): str(v) for k, v in doc.items()}


def opa_exception(case: Case, exceptions: dict[str, str]) -> str | None:
    """OPA's runner skips a case whose note is a key of its list, or matches a key holding `*` as
    a glob with `/` as separator (fnmatch's `*` also crosses `/`: no key of 1.22.3 has a `*`)."""
    if case.note in exceptions:
        return exceptions[case.note]
    for pattern, reason in exceptions.items():
        if "*" in pattern and fnmatch.fnmatchcase(case.note, pattern):
            return reason
    return None


@dataclass(frozen=True)
class Exclusion:
    name: str
    outcome: str  # the failure the case must still show, e.g. "missing_builtin: rego.parse_module"
    reason: str


def load_exclusions(path: Path = EXCLUSIONS) -> dict[str, Exclusion]:
    doc = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Exclusion] = {}
    for name, entry in (doc.get("excluded") or {}).items():
        out[name] = Exclusion(name, str(entry["outcome"]), " ".join(str(entry["reason"]).split()))
    return out
