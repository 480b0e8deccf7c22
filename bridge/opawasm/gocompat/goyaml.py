"""YAML as OPA reads and writes it: go-yaml v3 with the YAML 1.2 core schema, converted to JSON.

Reading (`unmarshal`, `is_valid`): `yes`/`on` and sexagesimals stay strings, integers parse like
Go's ParseInt(base 0), timestamps stay strings, only a stream's first document counts.
Writing (`marshal`): what sigs.k8s.io/yaml over go-yaml prints: sorted keys, 2-space indent with
sequences indented under their key, YAML 1.1-ambiguous strings double-quoted, strings with
indicators single-quoted, multi-line strings as literal blocks.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgspec
import yaml

from bridge.opawasm.gocompat.errors import GoError

# -- reading ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with go-yaml v3's implicit types (YAML 1.2 core schema) instead of
    YAML 1.1's: every plain scalar goes through `_plain`."""


_Loader.yaml_implicit_resolvers = {}
_PLAIN = "tag:groqpolicy:plain"
_Loader.add_implicit_resolver(_PLAIN, re.compile(r"(?s).*"), None)
_GO_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)")
_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _plain(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    v = node.value
    if v in ("true", "True", "TRUE"):
        return True
    if v in ("false", "False", "FALSE"):
        return False
    if v in ("", "~", "null", "Null", "NULL"):
        return None
    d = v.replace("_", "")
    if _GO_INT.fullmatch(d):
        sign = -1 if d[0] == "-" else 1
        body = d.lstrip("+-")
        if body[:2] in ("0x", "0X"):
            return sign * int(body[2:], 16)
        if body[:2] in ("0o", "0O"):
            return sign * int(body[2:], 8)
        if body[:2] in ("0b", "0B"):
            return sign * int(body[2:], 2)
        if len(body) > 1 and body[0] == "0":
            return sign * int(body, 8)
        return sign * int(body)
    if _YAML_FLOAT.fullmatch(v):
        f = float(v)
        return int(f) if f.is_integer() and abs(f) < 2**63 else f
    return v


def _binary(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return base64.b64decode("".join(node.value.split())).decode("utf-8", "replace")


_Loader.add_constructor(_PLAIN, _plain)
_Loader.add_constructor("tag:yaml.org,2002:binary", _binary)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: node.value)


def unmarshal(s: str) -> Any:
    """The first document of `s` as a JSON value (keys as strings, binary as base64)."""
    try:
        return _Converter().value(_first_document(s))
    except yaml.MarkedYAMLError as exc:
        raise GoError(_go_message(exc)) from None
    except yaml.YAMLError as exc:
        raise GoError(f"yaml: {exc}") from None


def _go_message(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's error in go-yaml's (libyaml's) words where they differ only in phrasing:
    `yaml: line N: did not find expected ...`, `yaml: mapping values are not allowed in this context`."""
    problem = exc.problem or ""
    line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
    if problem.startswith("expected ") and ", but found" in problem:
        return f"yaml: line {line}: did not find {problem.split(', but found')[0]}"
    if problem.startswith("expected ") and ", but got" in problem:
        return f"yaml: line {line}: did not find {problem.split(', but got')[0]}"
    if problem == "mapping values are not allowed here":
        return "yaml: mapping values are not allowed in this context"
    return f"yaml: line {line}: {problem}"


def is_valid(s: str) -> bool:
    try:
        for _ in yaml.load_all(s, Loader=_Loader):
            pass
        return True
    except yaml.YAMLError:
        return False


def _first_document(s: str) -> Any:
    for doc in yaml.load_all(s, Loader=_Loader):
        return doc
    return None


class _Converter:
    """PyYAML's values as JSON values. An alias is a shared object in PyYAML and a copy in JSON,
    so a small document of nested aliases expands exponentially ("billion laughs"): go-yaml v3
    refuses one whose aliases make up too much of what it decodes, and so does this."""

    def __init__(self) -> None:
        self.decoded = 0
        self.aliased = 0  # nodes decoded inside an alias's expansion
        self.depth = 0  # how many alias expansions enclose the current node
        self.seen: set[int] = set()

    def value(self, v: Any) -> Any:
        alias = isinstance(v, (dict, list)) and id(v) in self.seen
        if isinstance(v, (dict, list)):
            self.seen.add(id(v))
        self.depth += alias
        try:
            return self._convert(v)
        finally:
            self.depth -= alias

    def _convert(self, v: Any) -> Any:
        self.decoded += 1
        self.aliased += self.depth > 0
        if self.aliased > 100 and self.decoded > 1000 and self.aliased / self.decoded > _alias_ratio(self.decoded):
            raise GoError("yaml: document contains excessive aliasing")
        if isinstance(v, dict):
            return {_json_key(k): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, bytes):
            return base64.b64encode(v).decode()
        return v


def _alias_ratio(decoded: int) -> float:
    """go-yaml v3's allowedAliasRatio: 99% up to 400,000 decoded nodes, falling to 10% at 4,000,000."""
    if decoded <= 400_000:
        return 0.99
    if decoded >= 4_000_000:
        return 0.10
    return 0.99 - 0.89 * (decoded - 400_000) / 3_600_000


def _json_key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    return msgspec.json.encode(k).decode()


# -- writing ------------------------------------------------------------------------------------

_AMBIGUOUS = {
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
    "on", "On", "ON", "off", "Off", "OFF", "null", "Null", "NULL", "~", "",
}
_NUMBERISH = re.compile(
    r"^[-+]?(\d[\d_]*(\.\d*)?([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|0x[0-9a-fA-F_]+|0o?[0-7_]+|0b[01_]+|\.(inf|Inf|INF)|\.(nan|NaN|NAN))$"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d?-\d\d?([Tt ]|$)")


def _quote_double(s: str) -> str:
    return msgspec.json.encode(s).decode()


def _plain_ok(s: str) -> bool:
    if s != s.strip() or not s.isprintable():
        return False
    if s[0] in ",[]{}#&*!|>'\"%@`":
        return False
    if s[0] in "-?:" and (len(s) == 1 or s[1] == " "):
        return False
    if ": " in s or " #" in s or s.endswith(":"):
        return False
    return True


def _scalar_str(s: str) -> str:
    if s in _AMBIGUOUS or _NUMBERISH.match(s) or _TIMESTAMP.match(s):
        return _quote_double(s)
    if _plain_ok(s):
        return s
    if all(ch.isprintable() for ch in s):
        return "'" + s.replace("'", "''") + "'"
    return _quote_double(s)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return msgspec.json.encode(v).decode()
    return _scalar_str(v)


def _is_block_str(v: Any) -> bool:
    return isinstance(v, str) and "\n" in v and all(ch.isprintable() or ch == "\n" for ch in v) and v == v.rstrip(" ")


def _block(s: str, indent: int) -> list[str]:
    head = "|-" if not s.endswith("\n") else "|"
    body = s[:-1] if s.endswith("\n") else s
    if body[:1] == " ":
        head += "2"
    pad = " " * indent
    return [head] + [(pad + line) if line else "" for line in body.split("\n")]


def _emit(v: Any, indent: int) -> list[str]:
    """Lines for a value that starts on its own line at `indent`."""
    pad = " " * indent
    if isinstance(v, dict) and v:
        out: list[str] = []
        for k in sorted(v):
            out += _entry(pad + _scalar_str(k) + ":", v[k], indent)
        return out
    if isinstance(v, list) and v:
        out = []
        for item in v:
            out += _item(pad, item, indent)
        return out
    return [pad + _inline(v)]


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return _scalar(v)


def _entry(key: str, v: Any, indent: int) -> list[str]:
    if isinstance(v, (dict, list)) and v:
        return [key, *_emit(v, indent + 2)]
    if _is_block_str(v):
        b = _block(v, indent + 2)
        return [f"{key} {b[0]}", *b[1:]]
    return [f"{key} {_inline(v)}"]


def _item(pad: str, v: Any, indent: int) -> list[str]:
    if isinstance(v, (dict, list)) and v:
        inner = _emit(v, indent + 2)
        first = inner[0][indent + 2 :]
        return [f"{pad}- {first}", *inner[1:]]
    if _is_block_str(v):
        b = _block(v, indent + 2)
        return [f"{pad}- {b[0]}", *b[1:]]
    return [f"{pad}- {_inline(v)}"]


def marshal(v: Any) -> str:
    return "\n".join(_emit(v, 0)) + "\n"
