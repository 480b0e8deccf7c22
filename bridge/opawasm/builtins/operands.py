"""Operand checks with topdown's messages ("operand 1 must be string but got number"): a builtin
called with the wrong type of value is a builtin error, as in OPA."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import RegoSet


def need_str(v: Any, pos: int) -> str:
    if not isinstance(v, str):
        raise BuiltinError(f"operand {pos} must be string but got {type_name(v)}")
    return v


def need_int(v: Any, pos: int) -> int:
    if isinstance(v, Decimal):
        raise BuiltinError(f"operand {pos} must be a number within float64's range")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BuiltinError(f"operand {pos} must be number but got {type_name(v)}")
    if isinstance(v, float):
        if not v.is_integer():
            raise BuiltinError(f"operand {pos} must be integer number but got floating-point number")
        return int(v)
    return v


def need_num(v: Any, pos: int) -> int | float:
    if isinstance(v, Decimal):
        # a number beyond float64 (from JSON text): the host's arithmetic stays within float64
        raise BuiltinError(f"operand {pos} must be a number within float64's range")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BuiltinError(f"operand {pos} must be number but got {type_name(v)}")
    return v


def need_obj(v: Any, pos: int) -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise BuiltinError(f"operand {pos} must be object but got {type_name(v)}")
    return v


def type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "array"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, RegoSet):
        return "set"
    return type(v).__name__


def str_collection(v: Any, pos: int) -> list[str]:
    if isinstance(v, RegoSet):
        items = v.items
    elif isinstance(v, (list, tuple)):
        items = list(v)
    else:
        raise BuiltinError(f"operand {pos} must be one of {{array, set}} but got {type_name(v)}")
    for x in items:
        if not isinstance(x, str):
            raise BuiltinError(f"operand {pos} must be array of strings")
    return items
