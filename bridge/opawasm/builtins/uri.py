"""uri.parse / uri.is_valid (topdown uri.go over Go's net/url.Parse, ported in gocompat.neturl)."""

from __future__ import annotations

from typing import Any

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.gocompat import neturl
from bridge.opawasm.gocompat.errors import GoError


@builtin("uri.parse")
def uri_parse(ctx: EvalContext, s: Any) -> dict[str, str]:
    url = neturl.parse(need_str(s, 1))
    out: dict[str, str] = {}
    if url.scheme:
        out["scheme"] = url.scheme
    hostname, port = url.hostname_port()
    if hostname:
        out["hostname"] = hostname
    if port:
        out["port"] = port
    if url.path:
        out["path"] = url.path
        out["raw_path"] = url.raw_path or url.path
    if url.raw_query:
        out["raw_query"] = url.raw_query
    if url.fragment:
        out["fragment"] = url.fragment
    return out


@builtin("uri.is_valid")
def uri_is_valid(ctx: EvalContext, s: Any) -> bool:
    if not isinstance(s, str) or s == "":
        return False
    try:
        neturl.parse(s)
    except GoError:
        return False
    return True
