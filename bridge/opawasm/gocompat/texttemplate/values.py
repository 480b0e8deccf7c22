"""Go values as text/template sees OPA's variables, and how fmt prints them.

OPA decodes the variables with `json.Decoder.UseNumber`, so every number is a `json.Number`: a
string kind holding the number's text (`JNum` here). A missing map key is Go's zero `reflect.Value`,
printed as `<no value>` (`NOVALUE`).
"""

from __future__ import annotations

from typing import Any

import msgspec


class JNum(str):
    """Go's json.Number: a string kind holding the number's JSON text."""


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOVALUE"


NOVALUE = _NoValue()


def from_json(v: Any) -> Any:
    """A JSON value as OPA hands it to text/template (numbers as json.Number)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return JNum(msgspec.json.encode(v).decode())
    if isinstance(v, list):
        return [from_json(x) for x in v]
    if isinstance(v, dict):
        return {k: from_json(x) for k, x in v.items()}
    return v


def sprint1(v: Any, top: bool = False) -> str:
    """fmt's %v of one value; `top`: an action's own result, where nil prints as <no value>."""
    if v is NOVALUE:
        return "<no value>"
    if v is None:
        return "<no value>" if top else "<nil>"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + " ".join(sprint1(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{sprint1(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def sprint(args: list[Any]) -> str:
    """fmt.Sprint."""
    out = []
    for i, a in enumerate(args):
        # Sprint adds a space between operands when neither is a string
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(sprint1(a))
    return "".join(out)


def truth(v: Any) -> bool:
    if v is None or v is NOVALUE or v is False:
        return False
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    if isinstance(v, int) and not isinstance(v, bool):
        return v != 0
    return True


def gotype(v: Any) -> str:
    if isinstance(v, JNum):
        return "json.Number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return "interface {}"


def kind(v: Any) -> str:
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    return "other"
