"""uuid.rfc4122 and uuid.parse (topdown uuid.go over OPA's internal/uuid and google/uuid).

uuid.parse reads exactly the forms google/uuid's Parse reads (36 characters with dashes, a
`urn:uuid:` prefix in any case, 38 characters of which only the middle 36 are looked at, 32 hex
digits) and reports what OPA's fillMap reports: version and variant, and for versions 1 and 2 the
time, node id, MAC variables and clock sequence, plus id and domain for version 2.
"""

from __future__ import annotations

import os
import re
from typing import Any

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.values import UNDEFINED, canonical_key

_GREGORIAN_TO_UNIX_100NS = 0x01B21DD213814000
_HEX32 = re.compile("[0-9a-fA-F]{32}")
_DOMAINS = {0: "Person", 1: "Group", 2: "Org"}


@builtin("uuid.rfc4122")
def uuid_rfc4122(ctx: EvalContext, key: Any) -> str:
    ck = ("uuid", canonical_key(key))
    if ck not in ctx.cache:
        b = bytearray(os.urandom(16))
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        ctx.cache[ck] = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    value: str = ctx.cache[ck]
    return value


def _uuid_bytes(s: str) -> bytes | None:
    """google/uuid's Parse: the 16 bytes, or None where it returns an error."""
    if len(s) == 45:
        if s[:9].lower() != "urn:uuid:":
            return None
        s = s[9:]
    elif len(s) == 38:
        s = s[1:37]
    elif len(s) == 32:
        return bytes.fromhex(s) if _HEX32.fullmatch(s) else None
    if len(s) != 36 or s[8] != "-" or s[13] != "-" or s[18] != "-" or s[23] != "-":
        return None
    digits = s.replace("-", "")
    return bytes.fromhex(digits) if _HEX32.fullmatch(digits) else None


def _variant(b8: int) -> str:
    if b8 & 0xC0 == 0x80:
        return "RFC4122"
    if b8 & 0xE0 == 0xC0:
        return "Microsoft"
    return "Future" if b8 & 0xE0 == 0xE0 else "Reserved"


def _int64(n: int) -> int:
    """n wrapped to int64, as Go's arithmetic on the nanoseconds wraps."""
    return (n + (1 << 63)) % (1 << 64) - (1 << 63)


def _mac_variables(first: int) -> str:
    if first & 0b11 == 0b11:
        return "local:multicast"
    if first & 0b01:
        return "global:multicast"
    return "local:unicast" if first & 0b10 else "global:unicast"


@builtin("uuid.parse")
def uuid_parse(ctx: EvalContext, s: Any) -> Any:
    b = _uuid_bytes(need_str(s, 1))
    if b is None:
        return UNDEFINED
    version = b[6] >> 4
    out: dict[str, Any] = {"version": version, "variant": _variant(b[8])}
    if version in (1, 2):
        ticks = int.from_bytes(b[0:4], "big") | int.from_bytes(b[4:6], "big") << 32
        ticks |= (int.from_bytes(b[6:8], "big") & 0x0FFF) << 48
        out["time"] = _int64((ticks - _GREGORIAN_TO_UNIX_100NS) * 100)
        out["nodeid"] = "-".join(f"{x:02x}" for x in b[10:16])
        out["macvariables"] = _mac_variables(b[10])
        out["clocksequence"] = int.from_bytes(b[8:10], "big") & 0x3FFF
        if version == 2:
            out["id"] = int.from_bytes(b[0:4], "big")
            out["domain"] = _DOMAINS.get(b[9], f"Domain{b[9]}")
    return out
