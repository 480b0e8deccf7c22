"""Go's `net/url.Parse` (Go 1.26), the parts `uri.parse` / `uri.is_valid` show: which URLs it
refuses and with what message, and the fields it fills (`Scheme`, `Host`, `Path`, `RawPath`,
`RawQuery`, `Fragment`), with `Hostname()` and `Port()`.

Escaping follows Go's per-component rules (`shouldEscape`): a path keeps its raw form only when
it differs from Go's own escaping of the decoded path, a host may %-encode only non-ASCII bytes
(and `%25`), userinfo and ports allow ASCII characters only, and since Go 1.26 an http(s) host
may hold one colon only ("strict colons", the default of the module opa is built as).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.gocompat.strconv import quote

_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HOST_EXTRA = frozenset(b"!$&'()*+,;=:[]<>\"")
_RESERVED = frozenset(b"$&+,/:;=?@")
_USERINFO = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._:~!$&'()*+,;=%@")

PATH, HOST, ZONE, USERINFO, FRAGMENT = "path", "host", "zone", "userinfo", "fragment"


def should_escape(c: int, mode: str) -> bool:
    """Go's shouldEscape: must byte `c` be %-encoded in the given part of a URL?"""
    if c in _ALNUM or c in b"-_.~":
        return False
    if mode in (HOST, ZONE) and c in _HOST_EXTRA:
        return False
    if c in _RESERVED:
        if mode == PATH:
            return c == ord("?")
        if mode == USERINFO:
            return c in b"@/?:"
        if mode == FRAGMENT:
            return False
    return not (mode == FRAGMENT and c in b"!()*")


# per part of a URL, the ASCII text that needs no escaping: the common case, checked in C
_PLAIN = {mode: re.compile("[" + re.escape("".join(chr(c) for c in range(0x20, 0x7F) if not should_escape(c, mode)))
                           + "]*")
          for mode in (PATH, HOST, ZONE, USERINFO, FRAGMENT)}
# per part, each byte as `escape` writes it: a table lookup per byte instead of a call
_ESCAPED = {mode: tuple(chr(c) if not should_escape(c, mode) else f"%{c:02X}" for c in range(256))
            for mode in (PATH, HOST, ZONE, USERINFO, FRAGMENT)}
# the bytes an already-escaped path may hold (`validEncoded`), removed in C by bytes.translate
_ENCODED_PATH_OK = bytes(c for c in range(256) if c in b"!$&'()*+,;=:@[]%" or not should_escape(c, PATH))
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# a scheme as getScheme reads one: a letter, then letters, digits, "+", "-" or ".", then ":"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_COLON_PORT = re.compile("(?::[0-9]*)?")  # validOptionalPort: empty, or a colon and ASCII digits
_USERINFO_TEXT = re.compile("[" + re.escape("".join(sorted(_USERINFO))) + "]*")


def _escape_error(s: bytes) -> GoError:
    return GoError("invalid URL escape " + quote(s.decode("utf-8", "replace")))


def unescape(s: str, mode: str) -> str:
    if "%" not in s and (mode not in (HOST, ZONE) or _PLAIN[mode].fullmatch(s)):
        return s
    raw = s.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x25:  # %
            if i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX:
                raise _escape_error(raw[i : i + 3])
            v = int(raw[i + 1 : i + 3], 16)
            # a host may %-encode only non-ASCII bytes, and %25 (RFC 6874's zone introducer)
            if mode == HOST and v < 0x80 and raw[i : i + 3] != b"%25":
                raise _escape_error(raw[i : i + 3])
            if mode == ZONE and raw[i : i + 3] != b"%25" and v != 0x20 and should_escape(v, HOST):
                raise _escape_error(raw[i : i + 3])
            out.append(v)
            i += 3
            continue
        if mode in (HOST, ZONE) and c < 0x80 and should_escape(c, mode):
            raise GoError(f"invalid character {quote(chr(c))} in host name")
        out.append(c)
        i += 1
    return out.decode("utf-8", "replace")


def escape(s: str, mode: str) -> str:
    if _PLAIN[mode].fullmatch(s):
        return s
    return "".join(map(_ESCAPED[mode].__getitem__, s.encode("utf-8")))


@dataclass
class URL:
    scheme: str = ""
    host: str = ""
    path: str = ""
    raw_path: str = ""
    raw_query: str = ""
    fragment: str = ""

    def hostname(self) -> str:
        return _split_host_port(self.host)[0]

    def hostname_port(self) -> tuple[str, str]:
        """(Hostname(), Port()) in one pass."""
        return _split_host_port(self.host)

    def escaped_path(self) -> str:
        """URL.EscapedPath: the raw path when it is a valid escaping of the path, else Go's own."""
        if self.raw_path and _valid_encoded(self.raw_path):
            try:
                if unescape(self.raw_path, PATH) == self.path:
                    return self.raw_path
            except GoError:
                pass
        return "*" if self.path == "*" else escape(self.path, PATH)

    def port(self) -> str:
        return _split_host_port(self.host)[1]


def parse(raw: str) -> URL:
    """url.Parse; a refusal raises GoError with url.Error's text (`parse "<url>": <reason>`)."""
    u, sep, frag = raw.partition("#")
    try:
        url = _parse(u)
    except GoError as exc:
        raise GoError(f"parse {quote(u)}: {exc}") from None
    if sep and frag:
        try:
            url.fragment = unescape(frag, FRAGMENT)
        except GoError as exc:
            raise GoError(f"parse {quote(raw)}: {exc}") from None
    return url


def _scheme(raw: str) -> tuple[str, str]:
    if raw.startswith(":"):
        raise GoError("missing protocol scheme")
    m = _SCHEME.match(raw)
    if m is None:  # no scheme: a digit or any other character before the first colon, or no colon
        return "", raw
    return raw[: m.end() - 1], raw[m.end() :]


def _parse(raw: str) -> URL:
    if _CONTROL.search(raw):
        raise GoError("net/url: invalid control character in URL")
    url = URL()
    if raw == "*":
        url.path = "*"
        return url
    scheme, rest = _scheme(raw)
    url.scheme = scheme.lower()
    if rest.endswith("?") and rest.count("?") == 1:
        rest = rest[:-1]
    else:
        rest, _, url.raw_query = rest.partition("?")
    if not rest.startswith("/"):
        if url.scheme:
            return url  # rootless: opaque, which uri.parse does not report
        if ":" in rest.partition("/")[0]:
            raise GoError("first path segment in URL cannot contain colon")
    if (url.scheme or not rest.startswith("///")) and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        url.host = _authority(url.scheme, authority)
    url.path = unescape(rest, PATH)
    url.raw_path = "" if escape(url.path, PATH) == rest else rest
    return url


def _authority(scheme: str, authority: str) -> str:
    userinfo, at, host_port = authority.rpartition("@")
    host = _host(scheme, host_port if at else authority)
    if at:
        if not _USERINFO_TEXT.fullmatch(userinfo):
            raise GoError("net/url: invalid userinfo")
        for part in userinfo.split(":", 1):
            unescape(part, USERINFO)
    return host


def _valid_encoded(s: str) -> bool:
    return not s.encode("utf-8").translate(None, _ENCODED_PATH_OK)


def _valid_port(colon_port: str) -> bool:
    return _COLON_PORT.fullmatch(colon_port) is not None


def _host(scheme: str, host: str) -> str:
    bracket = host.rfind("[")
    if bracket > 0:
        raise GoError("invalid IP-literal")
    if bracket == 0:
        return _ip_literal(host)
    first = host.find(":")
    if first >= 0:
        last = host.rfind(":")
        # Go 1.26: an http(s) host holds one colon (the port's); other schemes keep Go's old
        # reading (the last colon starts the port), for hosts like "a:1,b:2" in database URLs
        i = first if last != first and scheme in ("http", "https") else last
        if not _valid_port(host[i:]):
            raise GoError(f"invalid port {quote(host[i:])} after host")
    return unescape(host, HOST)


def _ip_literal(host: str) -> str:
    close = host.rfind("]")
    if close < 0:
        raise GoError("missing ']' in host")
    colon_port = host[close + 1 :]
    if not _valid_port(colon_port):
        raise GoError(f"invalid port {quote(colon_port)} after host")
    inner = host[1:close]
    zone = inner.find("%25")
    if zone >= 0:
        name = unescape(inner[:zone], HOST) + unescape(inner[zone:], ZONE)
    else:
        name = unescape(inner, HOST)
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        raise GoError(f"invalid host: ParseAddr({quote(name)}): unable to parse IP") from None
    if addr.version == 4:
        raise GoError("invalid IP-literal")
    return "[" + name + "]" + colon_port


def _split_host_port(host_port: str) -> tuple[str, str]:
    host, port = host_port, ""
    colon = host.rfind(":")
    if colon >= 0 and _valid_port(host[colon:]):
        host, port = host[:colon], host[colon + 1 :]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port
