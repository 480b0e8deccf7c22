"""net.* builtins the wasm module leaves to the host (topdown cidr.go, net.go)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError, HaltError
from bridge.opawasm.values import RegoSet


def _net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if "/" not in s:
        raise BuiltinError(f"invalid CIDR address: {s}")
    try:
        return ipaddress.ip_network(s, strict=False)
    except ValueError:
        raise BuiltinError(f"invalid CIDR address: {s}") from None


def _contains(a: str, b: str) -> bool:
    na = _net(a)
    try:
        ip = ipaddress.ip_address(b)
        return ip.version == na.version and ip in na
    except ValueError:
        pass
    try:
        nb = _net(b)
    except BuiltinError:
        raise BuiltinError(f"not a valid textual representation of an IP address or CIDR: {b}") from None
    if isinstance(na, ipaddress.IPv4Network) and isinstance(nb, ipaddress.IPv4Network):
        return nb.subnet_of(na)
    if isinstance(na, ipaddress.IPv6Network) and isinstance(nb, ipaddress.IPv6Network):
        return nb.subnet_of(na)
    return False  # IPv4 and IPv6 never contain each other


def _operand(pos: int, v: Any) -> list[tuple[str, Any]]:
    def cidr_of(x: Any) -> str:
        if isinstance(x, str):
            return x
        if isinstance(x, list) and x:
            if not isinstance(x[0], str):
                raise BuiltinError(f"operand {pos} must be string")
            return x[0]
        raise BuiltinError(f"operand {pos}: element must be string or non-empty array")

    if isinstance(v, str):
        return [(v, v)]
    if isinstance(v, list):
        return [(cidr_of(x), i) for i, x in enumerate(v)]
    if isinstance(v, RegoSet):
        return [(cidr_of(x), x) for x in v.items]
    if isinstance(v, dict):
        return [(cidr_of(x), k) for k, x in v.items()]
    return []


@builtin("net.cidr_contains_matches")
def cidr_contains_matches(ctx: EvalContext, a: Any, b: Any) -> RegoSet:
    out = []
    for c1, i1 in _operand(1, a):
        for c2, i2 in _operand(2, b):
            if _contains(c1, c2):
                out.append([i1, i2])
    return RegoSet(out)


@builtin("net.cidr_expand")
def cidr_expand(ctx: EvalContext, s: Any) -> RegoSet:
    n = _net(need_str(s, 1))
    if n.num_addresses > 1 << 20:
        raise HaltError("net.cidr_expand: timed out before generating all IP addresses")
    out = []
    for i, ip in enumerate(n):
        if i & 0xFFF == 0:
            ctx.check_deadline()
        out.append(str(ip))
    return RegoSet(out)


@builtin("net.cidr_is_valid")
def cidr_is_valid(ctx: EvalContext, s: Any) -> bool:
    if not isinstance(s, str) or "/" not in s:
        return False
    try:
        ipaddress.ip_network(s, strict=False)
        return True
    except ValueError:
        return False


def _merge_net(x: Any) -> tuple[int, int, int, str]:
    """(version, first, last, text) like topdown's generateIPNet: a bare IPv4 address gets its
    classful default mask and keeps its host bits in the printed network."""
    if not isinstance(x, str):
        raise BuiltinError("element must be string")
    try:
        ip = ipaddress.ip_address(x)
    except ValueError:
        ip = None
    if ip is None:
        try:
            n = ipaddress.ip_network(x, strict=False)
        except ValueError:
            raise BuiltinError(f"invalid CIDR address: {x}") from None
        return n.version, int(n.network_address), int(n.broadcast_address), str(n)
    if ip.version == 6:
        raise BuiltinError("IPv6 invalid: needs prefix length")
    first_octet = int(ip) >> 24
    prefix = 8 if first_octet < 128 else 16 if first_octet < 192 else 24
    n = ipaddress.ip_network(f"{x}/{prefix}", strict=False)
    return 4, int(n.network_address), int(n.broadcast_address), f"{x}/{prefix}"


@builtin("net.cidr_merge")
def cidr_merge(ctx: EvalContext, addrs: Any) -> RegoSet:
    if isinstance(addrs, RegoSet):
        items = addrs.items
    elif isinstance(addrs, list):
        items = addrs
    else:
        raise BuiltinError("operand must be an array")
    out: list[str] = []
    nets = [_merge_net(x) for x in items]
    for version in (4, 6):
        # topdown's mergeCIDRs: sort by (last, first), fold adjacent/overlapping ranges from the end
        ranges: list[list[Any]] = sorted(([lo, hi, t] for v, lo, hi, t in nets if v == version), key=lambda r: (r[1], r[0]))
        i = len(ranges) - 1
        while i > 0:
            if ranges[i][0] - 1 <= ranges[i - 1][1]:
                first = min(ranges[i - 1][0], ranges[i][0])
                ranges[i - 1] = [first, ranges[i][1], None]
                del ranges[i]
            i -= 1
        cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        for lo, hi, text in ranges:
            if text is not None:
                out.append(text)
            else:
                out += [str(n) for n in ipaddress.summarize_address_range(cls(lo), cls(hi))]
    return RegoSet(out)


@builtin("net.lookup_ip_addr")
def lookup_ip_addr(ctx: EvalContext, name: Any) -> RegoSet:
    name = need_str(name, 1)
    ctx.check_deadline()
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError as exc:
        raise BuiltinError(f"lookup {name}: {exc}") from None
    return RegoSet({i[4][0] for i in infos})
