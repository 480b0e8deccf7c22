"""Rego values on the Python side of the ABI, and their text forms.

Builtin arguments arrive as `opa_value_dump` text and results go back through `opa_value_parse`.
Both are JSON plus two Rego extensions: set literals (`{1, 2}`, `set()`) and non-string object
keys (`{1: "a"}`). Plain JSON (the common case) is handled by msgspec in one call; only text
that msgspec rejects goes through the small parser below.

Python model: null/bool/str/list/dict as usual, integers as `int`, other numbers as `float`
(`BigNumber` beyond float64's range: Rego's numbers are arbitrary-precision, and OPA's wasm
library keeps such a number's text), sets as `RegoSet`. Object keys that are not strings must be hashable, so array keys become tuples
and object keys `ObjectKey`s (`object_key`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import msgspec

from bridge.opawasm.gocompat.strconv import format_float_g, quote

_decode = msgspec.json.decode


class BigNumber(Decimal):
    """A number beyond float64's range: its value (it compares with ints and floats), and the text
    it was written as, which is how Go's `ast.Number` prints it."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> BigNumber:
        self = super().__new__(cls, text)
        self.text = text
        return self


def decode_number(text: str) -> int | float | BigNumber:
    """A number's text as Rego writes it (also `.5`, `1.`, as the module keeps literals)."""
    if "." in text or "e" in text or "E" in text:
        return _wide_float(text)
    # past Python's digit limit for int() (4300): kept exact as its text, like Go's big.Int
    return int(text) if len(text) <= 4000 else BigNumber(text)


def _wide_float(text: str) -> float | BigNumber:
    f = float(text)
    return BigNumber(text) if math.isinf(f) else f


# for text the plain decoder refuses with "number out of range": every float literal goes through
# the hook, so this decoder is only the fallback
_decode_wide = msgspec.json.Decoder(float_hook=_wide_float).decode


def decode_json(text: bytes) -> Any:
    """JSON text as Python values, numbers beyond float64's range as `BigNumber`."""
    try:
        return _decode(text)
    except msgspec.ValidationError:
        return _decode_wide(text)


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()
"""An undefined result (no value), as opposed to `None` (null): what `evaluate` returns for an
undefined entrypoint and what a builtin returns to make its call undefined."""


class RegoSet:
    """An immutable Rego set: members deduplicated and kept in Rego's canonical order."""

    __slots__ = ("items",)

    def __init__(self, members: Iterable[Any] = ()) -> None:
        seen: dict[bytes, Any] = {}
        for m in members:
            seen.setdefault(canonical_key(m), m)
        self.items: list[Any] = sorted(seen.values(), key=sort_key)

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, value: Any) -> bool:
        k = canonical_key(value)
        return any(canonical_key(m) == k for m in self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegoSet) and canonical_key(self) == canonical_key(other)

    def __hash__(self) -> int:
        return hash(canonical_key(self))

    def __repr__(self) -> str:
        return f"RegoSet({self.items!r})"


def _type_rank(v: Any) -> int:
    # Rego's total order across types: null < boolean < number < string < array < object < set
    # (see ast.Compare). Sets sort after objects.
    if v is None:
        return 0
    if v is True or v is False:
        return 1
    if isinstance(v, (int, float, Decimal)):
        return 2
    if isinstance(v, str):
        return 3
    if isinstance(v, (list, tuple)):
        return 4
    if isinstance(v, dict):
        return 5
    if isinstance(v, RegoSet):
        return 6
    return 7


class _Key:
    """Sort wrapper implementing Rego's value ordering (ast.Compare)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Key) -> bool:
        return compare(self.v, other.v) < 0


def sort_key(v: Any) -> _Key:
    return _Key(v)


def compare(a: Any, b: Any) -> int:
    """Rego's ordering: by type rank, then by value (arrays elementwise, objects by sorted keys)."""
    ra, rb = _type_rank(a), _type_rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra in (0,):
        return 0
    if ra == 1 or ra == 2 or ra == 3:
        return (a > b) - (a < b)
    if ra == 4:
        for x, y in zip(a, b, strict=False):
            c = compare(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if ra == 6:
        return compare(list(a.items), list(b.items))
    if ra == 5:
        ka = sorted(a, key=sort_key)
        kb = sorted(b, key=sort_key)
        for x, y in zip(ka, kb, strict=False):
            c = compare(x, y)
            if c:
                return c
            c = compare(a[x], b[y])
            if c:
                return c
        return (len(ka) > len(kb)) - (len(ka) < len(kb))
    return 0


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, BigNumber):
        return msgspec.Raw(obj.text.encode())
    if isinstance(obj, RegoSet):
        if not obj.items:
            return msgspec.Raw(b"set()")
        return msgspec.Raw(b"{" + b",".join(encode_value(m) for m in obj.items) + b"}")
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} as a Rego value")


_value_encoder = msgspec.json.Encoder(enc_hook=_enc_hook, order="sorted")
_json_encoder = msgspec.json.Encoder(enc_hook=_enc_hook, order="sorted")
encode_json = _json_encoder.encode
"""JSON bytes of a JSON-view value (`to_json`), objects' keys sorted, big numbers as numbers."""


def encode_value(v: Any) -> bytes:
    """Rego value text for `opa_value_parse` (set literals allowed)."""
    if isinstance(v, dict) and any(not isinstance(k, str) for k in v):
        items = sorted(v.items(), key=lambda kv: sort_key(kv[0]))
        return b"{" + b",".join(encode_value(k) + b":" + encode_value(x) for k, x in items) + b"}"
    if isinstance(v, (list, tuple)) and any(isinstance(x, dict) and any(not isinstance(k, str) for k in x) for x in v):
        return b"[" + b",".join(encode_value(x) for x in v) + b"]"
    return _value_encoder.encode(v)


def canonical_key(v: Any) -> bytes:
    """Bytes equal exactly when two Rego values are equal (1 == 1.0 in Rego). Fast paths: JSON leaves
    by exact type, and string keys sorted plainly (`compare` orders strings by Python's `<` too)."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return _value_encoder.encode(v)
    if t is dict and all(type(k) is str for k in v):
        return b"{" + b",".join(_value_encoder.encode(k) + b":" + canonical_key(x) for k, x in sorted(v.items())) + b"}"
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        v = int(v)
    if isinstance(v, (list, tuple)):
        return b"[" + b",".join(canonical_key(x) for x in v) + b"]"
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: sort_key(kv[0]))
        return b"{" + b",".join(canonical_key(k) + b":" + canonical_key(x) for k, x in items) + b"}"
    if isinstance(v, RegoSet):
        return b"s{" + b",".join(canonical_key(x) for x in v.items) + b"}"
    return _value_encoder.encode(v)


def to_json(v: Any) -> Any:
    """The JSON view of a value (sets become arrays, non-string keys become strings), as OPA prints."""
    if isinstance(v, RegoSet):
        return [to_json(x) for x in v.items]
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else _json_encoder.encode(to_json(k)).decode()): to_json(x) for k, x in v.items()}
    return v


def decode_value(text: bytes) -> Any:
    """Parse `opa_value_dump` output."""
    try:
        return decode_json(text)
    except msgspec.DecodeError:
        pass
    p = _Parser(text.decode("utf-8"))
    v = p.value()
    p.ws()
    if p.i != len(p.s):
        raise ValueError(f"rego value: trailing data at offset {p.i}")
    return v


class _Parser:
    __slots__ = ("i", "s")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def ws(self) -> None:
        s, i, n = self.s, self.i, len(self.s)
        while i < n and s[i] in " \t\r\n":
            i += 1
        self.i = i

    def value(self) -> Any:
        self.ws()
        s = self.s
        c = s[self.i] if self.i < len(s) else ""
        if c == "{":
            return self._brace()
        if c == "[":
            self.i += 1
            out: list[Any] = []
            self.ws()
            if s[self.i] == "]":
                self.i += 1
                return out
            while True:
                out.append(self.value())
                self.ws()
                if s[self.i] == ",":
                    self.i += 1
                    continue
                if s[self.i] == "]":
                    self.i += 1
                    return out
                raise ValueError(f"rego value: expected , or ] at offset {self.i}")
        if s.startswith("set()", self.i):
            self.i += 5
            return RegoSet()
        if c == '"':
            return self._scalar_json(self._string_end())
        # number / true / false / null
        j = self.i
        while j < len(s) and s[j] not in ",:]} \t\r\n":
            j += 1
        return self._scalar_json(j)

    def _string_end(self) -> int:
        s, j = self.s, self.i + 1
        while True:
            c = s[j]
            if c == "\\":
                j += 2
                continue
            if c == '"':
                return j + 1
            j += 1

    def _scalar_json(self, end: int) -> Any:
        tok = self.s[self.i : end]
        self.i = end
        return decode_json(tok.encode("utf-8"))

    def _brace(self) -> Any:
        s = self.s
        self.i += 1
        self.ws()
        if s[self.i] == "}":
            self.i += 1
            return {}
        first = self.value()
        self.ws()
        if s[self.i] == ":":
            obj: dict[Any, Any] = {}
            key = first
            while True:
                self.i += 1  # ':'
                obj[object_key(key)] = self.value()
                self.ws()
                if s[self.i] == ",":
                    self.i += 1
                    key = self.value()
                    self.ws()
                    if s[self.i] != ":":
                        raise ValueError(f"rego value: expected : at offset {self.i}")
                    continue
                if s[self.i] == "}":
                    self.i += 1
                    return obj
                raise ValueError(f"rego value: expected , or }} at offset {self.i}")
        members = [first]
        while True:
            if s[self.i] == ",":
                self.i += 1
                members.append(self.value())
                self.ws()
                continue
            if s[self.i] == "}":
                self.i += 1
                return RegoSet(members)
            raise ValueError(f"rego value: expected , or }} at offset {self.i}")


def object_key(k: Any) -> Any:
    """`k` as a Python dict key: arrays become tuples and objects `ObjectKey`s, all the way down."""
    if isinstance(k, list):
        return tuple(object_key(x) for x in k)
    if isinstance(k, dict) and not isinstance(k, ObjectKey):
        return ObjectKey({object_key(x): v for x, v in k.items()})
    return k


class ObjectKey(dict[Any, Any]):
    """An object used as an object key (`{{"a": 1}: true}` is valid Rego): a dict, hashed by value.
    Never mutated after it is built, so its hash stays valid."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(canonical_key(self))


def rego_repr(v: Any) -> str:
    """Rego's text for a value (`ast.Value.String()`): what sprintf's %v prints for composites."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, BigNumber):
        return v.text
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e21:
            return str(int(v))
        return format_float_g(v, exp_limit=21)
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(rego_repr(x) for x in v) + "]"
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: sort_key(kv[0]))
        return "{" + ", ".join(f"{rego_repr(k)}: {rego_repr(x)}" for k, x in items) + "}"
    if isinstance(v, RegoSet):
        if not v.items:
            return "set()"
        return "{" + ", ".join(rego_repr(x) for x in v.items) + "}"
    return str(v)
