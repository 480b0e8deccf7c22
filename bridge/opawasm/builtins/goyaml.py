"""yaml.marshal's output as OPA prints it (sigs.k8s.io/yaml over go-yaml: sorted keys, 2-space
indent with sequences indented under their key, YAML 1.1-ambiguous strings double-quoted, strings
with indicators single-quoted, multi-line strings as literal blocks)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

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
    if isinstance(v, dict) and v:
        return [key] + _emit(v, indent + 2)
    if isinstance(v, list) and v:
        return [key] + _emit(v, indent + 2)
    if _is_block_str(v):
        b = _block(v, indent + 2)
        return [f"{key} {b[0]}"] + b[1:]
    return [f"{key} {_inline(v)}"]


def _item(pad: str, v: Any, indent: int) -> list[str]:
    if (isinstance(v, dict) or isinstance(v, list)) and v:
        inner = _emit(v, indent + 2)
        first = inner[0][indent + 2 :]
        return [f"{pad}- {first}"] + inner[1:]
    if _is_block_str(v):
        b = _block(v, indent + 2)
        return [f"{pad}- {b[0]}"] + b[1:]
    return [f"{pad}- {_inline(v)}"]


def marshal(v: Any) -> str:
    return "\n".join(_emit(v, 0)) + "\n"
