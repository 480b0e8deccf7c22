"""Go's `encoding/base64` decoding and `encoding/pem.Decode`, as OPA's crypto and token builtins
call them: which inputs they refuse, with Go's message (`illegal base64 data at input byte N`),
and where a PEM block's data ends (what follows it is the `rest` a caller may refuse).
"""

from __future__ import annotations

import binascii
import string
from dataclasses import dataclass, field

from bridge.opawasm.gocompat.errors import GoError

_STD = {c: i for i, c in enumerate((string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/").encode())}
_URL = {c: i for i, c in enumerate((string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_").encode())}
_NEWLINES = b"\r\n"


def _corrupt(offset: int) -> GoError:
    return GoError(f"illegal base64 data at input byte {offset}")


_TO_STD = bytes.maketrans(b"-_", b"+/")


def b64decode(src: bytes | str, *, url: bool = False, padded: bool = True) -> bytes:
    """`base64.{Std,URL,RawStd,RawURL}Encoding.DecodeString`; newlines are skipped, as in Go."""
    data = src.encode() if isinstance(src, str) else src
    fast = _fast(data, url, padded)
    if fast is not None:
        return fast
    alphabet = _URL if url else _STD
    out = bytearray()
    si = 0
    while True:
        si, chunk, done = _quantum(data, si, alphabet, padded)
        out += chunk
        if done:
            return bytes(out)


def _fast(data: bytes, url: bool, padded: bool) -> bytes | None:
    """The C decoder, for input it reads exactly as Go does (no newlines, canonical padding); None
    sends everything else (and every error, for Go's offset) to the port below."""
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b"").replace(b"\n", b"")  # Go skips them wherever they are
    if url:
        if b"+" in data or b"/" in data:
            return None
        data = data.translate(_TO_STD)
    if not padded:
        if b"=" in data or len(data) % 4 == 1:
            return None
        data += b"=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def _quantum(src: bytes, si: int, alphabet: dict[int, int], padded: bool) -> tuple[int, bytes, bool]:
    """Go's decodeQuantum: up to four symbols -> up to three bytes; (next index, bytes, at end)."""
    values: list[int] = []
    n = len(src)
    while len(values) < 4:
        if si == n:
            if not values:
                return si, b"", True
            if len(values) == 1 or padded:
                raise _corrupt(si - len(values))
            break
        c = src[si]
        si += 1
        if c in alphabet:
            values.append(alphabet[c])
            continue
        if c in _NEWLINES:
            continue
        if c != 0x3D or not padded:  # '='
            raise _corrupt(si - 1)
        si = _padding(src, si, len(values))
        break
    acc = 0
    for v in ([*values, 0, 0, 0])[:4]:
        acc = acc << 6 | v
    chunk = acc.to_bytes(3, "big")[: len(values) - 1]
    return si, chunk, len(values) < 4 or si >= n


def _padding(src: bytes, si: int, have: int) -> int:
    n = len(src)
    if have < 2:
        raise _corrupt(si - 1)  # incorrect padding
    if have == 2:  # "==" expected, the first "=" read already
        while si < n and src[si] in _NEWLINES:
            si += 1
        if si == n:
            raise _corrupt(n)
        if src[si] != 0x3D:
            raise _corrupt(si - 1)
        si += 1
    while si < n and src[si] in _NEWLINES:
        si += 1
    if si < n:
        raise _corrupt(si)  # trailing garbage
    return si


@dataclass
class PEMBlock:
    type: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _line(data: bytes) -> tuple[bytes, bytes, int]:
    i = data.find(b"\n")
    if i < 0:
        i = j = len(data)
    else:
        j = i + 1
        if i > 0 and data[i - 1] == 0x0D:
            i -= 1
    return data[:i].rstrip(b" \t"), data[j:], j


_BEGIN, _END, _DASHES = b"\n-----BEGIN ", b"\n-----END ", b"-----"


def pem_decode(data: bytes) -> tuple[PEMBlock | None, bytes]:
    """`pem.Decode`: the first well-formed block and what follows its END line, or (None, data).
    Text before the block is skipped; a BEGIN without a matching END is passed over."""
    rest, trailer = data, 0
    while 0 <= trailer <= len(rest):
        rest = rest[trailer:]
        end = rest.find(_END)
        if end < 0:
            break
        trailer = end + len(_END)
        begin = rest[:end].rfind(_BEGIN[1:])
        if begin < 0 or (begin > 0 and rest[begin - 1] != 0x0A):
            continue
        skip = begin + len(_BEGIN) - 1
        rest, end, trailer = rest[skip:], end - skip, trailer - skip
        block, after = _block(rest, end, trailer)
        if block is not None:
            return block, after
    return None, data


def _block(rest: bytes, end: int, trailer: int) -> tuple[PEMBlock | None, bytes]:
    type_line, rest, used = _line(rest)
    end, trailer = end - used, trailer - used
    if not type_line.endswith(_DASHES):
        return None, b""
    kind = type_line[: -len(_DASHES)]
    headers: dict[str, str] = {}
    while True:
        if not rest:
            return None, b""
        line, after, used = _line(rest)
        key, colon, value = line.partition(b":")
        if not colon:
            break
        headers[key.strip().decode("latin-1")] = value.strip().decode("latin-1")
        rest, end, trailer = after, end - used, trailer - used
    if headers and end < 0:
        return None, b""
    tail = rest[trailer:]
    want = len(kind) + len(_DASHES)
    if len(tail) < want or not tail[:want].startswith(kind) or not tail[:want].endswith(_DASHES):
        return None, b""
    if _line(tail[want:])[0]:
        return None, b""
    body = b""
    if end > 0:
        try:
            body = b64decode(rest[:end].replace(b" ", b"").replace(b"\t", b""))
        except GoError:
            return None, b""
    return PEMBlock(kind.decode("latin-1"), body, headers), _line(rest[end + len(_END) - 1 :])[1]
