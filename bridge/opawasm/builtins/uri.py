"""uri.parse / uri.is_valid (topdown uri.go over Go's net/url.Parse)."""

from __future__ import annotations

import re
from typing import Any

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


class _URLError(BuiltinError):
    pass


def _unescape(s: str, what: str) -> str:
    out = bytearray()
    i = 0
    raw = s.encode("utf-8")
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            h = raw[i + 1 : i + 3]
            if len(h) < 2 or not all(chr(x) in "0123456789abcdefABCDEF" for x in h):
                bad = raw[i : i + 3].decode("utf-8", "replace")
                raise _URLError(f'invalid URL escape "{bad}"')
            out.append(int(h, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "replace")


def _should_escape_path(ch: str) -> bool:
    if ch.isascii() and (ch.isalnum() or ch in "-_.~$&+,/:;=@!*'()"):
        return False
    return True


def _escape_path(p: str) -> str:
    return "".join(("".join(f"%{b:02X}" for b in ch.encode()) if _should_escape_path(ch) else ch) for ch in p)


def go_url_parse(raw: str) -> dict[str, str]:
    rest, _, frag = raw.partition("#")
    if "#" in raw:
        frag = _unescape(frag, "fragment")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rest):
        raise _URLError("net/url: invalid control character in URL")
    scheme = ""
    m = _SCHEME.match(rest)
    if m and rest[m.end() : m.end() + 1] == ":":
        scheme, rest = m.group(0).lower(), rest[m.end() + 1 :]
    elif rest.startswith(":"):
        raise _URLError("missing protocol scheme")
    query = ""
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest, _, query = rest.partition("?")
    out: dict[str, str] = {}
    if scheme:
        out["scheme"] = scheme
    if not rest.startswith("/"):
        if scheme:
            # opaque URL (mailto:x@y): Go keeps it in Opaque, which uri.parse does not report
            if query:
                out["raw_query"] = query
            if frag:
                out["fragment"] = frag
            return out
        seg = rest.split("/", 1)[0]
        if ":" in seg:
            raise _URLError("first path segment in URL cannot contain colon")
    if (scheme or not rest.startswith("///")) and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        hostname, port = _host_port(authority.rpartition("@")[2] if "@" in authority else authority)
        if hostname:
            out["hostname"] = hostname
        if port:
            out["port"] = port
    if rest:
        path = _unescape(rest, "path")
        out["path"] = path
        out["raw_path"] = rest if _escape_path(path) != rest else path
    if query:
        out["raw_query"] = query
    if frag:
        out["fragment"] = frag
    return out


def _host_port(host: str) -> tuple[str, str]:
    """(hostname, port) of an authority's host part: `[v6]:port`, `name:port` or `name`."""
    hostname, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise _URLError("missing ']' in host")
        hostname, after = host[1:end], host[end + 1 :]
        if after:
            if not after.startswith(":") or (not after[1:].isdigit() and after[1:] != ""):
                raise _URLError(f'invalid port "{after}" after host')
            port = after[1:]
    elif ":" in host:
        hostname, _, port = host.rpartition(":")
        if port and not port.isdigit():
            raise _URLError(f'invalid port ":{port}" after host')
    return _unescape(hostname, "host"), port


@builtin("uri.parse")
def uri_parse(ctx: EvalContext, s: Any) -> dict[str, str]:
    raw = need_str(s, 1)
    try:
        return go_url_parse(raw)
    except _URLError as exc:
        raise BuiltinError(f'parse "{raw}": {exc}') from None


@builtin("uri.is_valid")
def uri_is_valid(ctx: EvalContext, s: Any) -> bool:
    if not isinstance(s, str) or s == "":
        return False
    try:
        go_url_parse(s)
        return True
    except _URLError:
        return False
