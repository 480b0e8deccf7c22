"""io.jwt.* builtins (topdown tokens.go): decode, verify_{hs,rs,ps,es}{256,384,512}, verify_eddsa,
decode_verify; keys and signature checks in `jwt_keys`, encode_sign / encode_sign_raw in `jwt_sign`.

Decoding follows RFC 7519 section 7.2 as topdown does: a JWE (a header with `enc`) is refused, a
`crit` header naming a parameter topdown does not understand makes decode_verify's answer
"not verified", and errors carry topdown's messages."""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import msgspec

from bridge.opawasm.builtins.jwt_keys import (
    ALGORITHMS,
    KEY_CACHE_MAX_TEXT,
    VerificationKey,
    check,
    keys_from_material,
    verify_with,
)
from bridge.opawasm.builtins.operands import need_obj, need_str
from bridge.opawasm.builtins.registry import Builtin, EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.encoding import b64decode
from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.values import decode_json

_URL_TO_STD = bytes.maketrans(b"-_", b"+/")


def b64url_decode(s: str) -> bytes:
    """topdown's base64url.decode: padding added where it was left off (RFC 7515 appendix C)."""
    if not s.endswith("="):
        rem = len(s) % 4
        if rem == 1:
            raise BuiltinError(f"illegal base64url string: {s}")
        s += "=" * ((4 - rem) % 4)
    if s.isascii() and "+" not in s and "/" not in s:
        try:  # the common case, in C; anything it refuses goes to Go's decoder for Go's answer
            return binascii.a2b_base64(s.encode("ascii").translate(_URL_TO_STD), strict_mode=True)
        except binascii.Error:
            pass
    try:
        return b64decode(s, url=True)
    except GoError as exc:
        raise BuiltinError(str(exc)) from None


@dataclass
class _Token:
    header: str
    payload: str
    signature: str

    @property
    def signing_input(self) -> bytes:
        return f"{self.header}.{self.payload}".encode()


def _token(token: Any) -> _Token:
    t = need_str(token, 1)
    if "." not in t:
        raise BuiltinError("encoded JWT had no period separators")
    parts = t.split(".")
    if len(parts) != 3:
        raise BuiltinError(f"encoded JWT must have 3 sections, found {len(parts)}")
    return _Token(*parts)


def _json_object(raw: bytes) -> dict[str, Any]:
    """extractJSONObject: json.unmarshal, then it must be an object."""
    try:
        v = decode_json(raw)
    except msgspec.DecodeError as exc:
        raise BuiltinError(f"invalid JSON: {exc}") from None
    if not isinstance(v, dict):
        raise BuiltinError("decoded JSON type was not an Object")
    return v


def _decoded_header(t: _Token) -> dict[str, Any]:
    try:
        raw = b64url_decode(t.header)
    except BuiltinError as exc:
        raise BuiltinError(f"JWT header had invalid encoding: {exc}") from None
    try:
        header = _json_object(raw)
    except BuiltinError as exc:
        raise BuiltinError(f"bad JWT header: {exc}") from None
    if "enc" in header:  # RFC 7516 section 9: a JWE, which topdown does not decode
        raise BuiltinError("JWT is a JWE object, which is not supported")
    return header


def _payload(t: _Token) -> bytes:
    try:
        return b64url_decode(t.payload)
    except BuiltinError as exc:
        raise BuiltinError(f"JWT payload had invalid encoding: {exc}") from None


@dataclass
class _Header:
    alg: str = ""
    kid: str = ""
    typ: str = ""
    cty: str = ""
    crit: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)

    def valid(self) -> bool:
        # RFC 7515: alg must be there, and every critical parameter must be one we understand
        return self.alg != "" and not any(u in self.crit for u in self.unknown)


def _parse_header(header: dict[str, Any]) -> _Header:
    h = _Header()
    for k, v in header.items():
        if k in ("alg", "kid", "typ", "cty"):
            if not isinstance(v, str):
                raise BuiltinError(f"{k}: must be a string")
            setattr(h, k, v)
        elif k == "crit":
            if not isinstance(v, list):
                raise BuiltinError("crit: must be a list")
            h.crit = {x for x in v if isinstance(x, str)}
            if not h.crit:
                raise BuiltinError("crit: must be a nonempty list")
        else:
            h.unknown.append(k)
    return h


def _decode(token: Any) -> list[Any]:
    t = _token(token)
    header = _decoded_header(t)
    payload = _payload(t)
    if header.get("cty") == "JWT":
        # a nested token, quoted as jwt.io quotes it
        return _decode(payload.decode("utf-8", "replace").strip("\"'"))
    body = _json_object(payload)
    try:
        signature = b64url_decode(t.signature)
    except BuiltinError as exc:
        raise BuiltinError(f"JWT signature had invalid encoding: {exc}") from None
    return [header, body, signature.hex()]


@builtin("io.jwt.decode")
def jwt_decode(ctx: EvalContext, token: Any) -> list[Any]:
    return _decode(token)


def _verify(alg: str) -> Builtin:
    def fn(ctx: EvalContext, token: Any, key: Any) -> bool:
        t = _token(token)
        material = need_str(key, 2)
        if alg.startswith("HS"):
            return check(alg, material, t.signing_input, b64url_decode(t.signature))
        keys = keys_from_material(material)
        signature = b64url_decode(t.signature)
        header = _parse_header(_decoded_header(t))
        return verify_with(keys, header.alg, header.kid, alg, t.signing_input, signature, pss_auto=True)

    return fn


for _a in sorted(ALGORITHMS - {"EdDSA"}):
    builtin(f"io.jwt.verify_{_a.lower()}")(_verify(_a))
builtin("io.jwt.verify_eddsa")(_verify("EdDSA"))


@dataclass
class _Constraints:
    keys: Sequence[VerificationKey] | None = None
    cert: str = ""  # the text `keys` came from
    secret: str = ""
    alg: str = ""
    iss: str = ""
    aud: str = ""
    time: float = -1.0


def _constraints(ctx: EvalContext, given: dict[str, Any]) -> _Constraints:
    c = _Constraints()
    for name, v in given.items():
        if name == "cert":
            if not isinstance(v, str):
                raise BuiltinError("cert constraint: must be a string")
            c.keys, c.cert = keys_from_material(v), v
        elif name in ("secret", "alg", "iss", "aud"):
            if not isinstance(v, str):
                raise BuiltinError(f"{name} constraint: must be a string")
            setattr(c, name, v)
        elif name == "time":
            c.time = _time(v)
        else:
            raise BuiltinError(f"unknown token validation constraint: {name}")
    if c.time == -1.0:
        c.time = _time(ctx.now_ns)
    n = (c.keys is not None) + (c.secret != "")
    if n != 1:
        raise BuiltinError("duplicate key constraints" if n > 1 else "no key constraint")
    return c


def _time(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BuiltinError("token time constraint: must be a number")
    if v < 0:
        raise BuiltinError("token time constraint: must not be negative")
    return float(v)


_UNVERIFIED: list[Any] = [False, {}, {}]


# Verified tokens by (token, alg constraint, secret, cert text): a client sends the same token with
# every request until it expires, and decoding and checking it again cost more than the rest of the
# call. What is kept holds for the token and key alone: the time-dependent claims (exp, nbf) are
# checked on every call. A decoding error is not kept (it raises). Tokens and secrets up to
# TOKEN_CACHE_MAX_TEXT and cert texts up to the key cache's limit: at most ~10 MiB of text.
TOKEN_CACHE_SIZE = 128
TOKEN_CACHE_MAX_TEXT = 16 * 1024


@builtin("io.jwt.decode_verify")
def decode_verify(ctx: EvalContext, token: Any, constraints: Any) -> list[Any]:
    c = _constraints(ctx, need_obj(constraints, 2))
    t = need_str(token, 1)
    if len(t) <= TOKEN_CACHE_MAX_TEXT and len(c.secret) <= TOKEN_CACHE_MAX_TEXT and len(c.cert) <= KEY_CACHE_MAX_TEXT:
        verified = _cached_verification(t, c.alg, c.secret, c.cert if c.keys is not None else None)
    else:
        verified = _verification(t, c)
    if verified is None:
        return _UNVERIFIED
    decoded, body = verified
    return [True, decoded, body] if _claims_hold(body, c) else _UNVERIFIED


@lru_cache(maxsize=TOKEN_CACHE_SIZE)
def _cached_verification(token: str, alg: str, secret: str, cert: str | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    keys = None if cert is None else keys_from_material(cert)  # the key cache's parse of the same text
    return _verification(token, _Constraints(keys=keys, cert=cert or "", secret=secret, alg=alg))


def _verification(token: str, c: _Constraints) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The decoded header and payload of a token whose signatures (nested ones too) check out with
    the constraints' key and alg, else None; the claims are not looked at."""
    t = _token(token)
    while True:
        decoded = _decoded_header(t)
        header = _parse_header(decoded)
        if not header.valid() or (c.alg and c.alg != header.alg):
            return None
        signature = b64url_decode(t.signature)
        if c.keys is not None:
            ok = verify_with(c.keys, header.alg, header.kid, header.alg, t.signing_input, signature, pss_auto=False)
        else:
            ok = check(header.alg, c.secret, t.signing_input, signature)
        if not ok:
            return None
        payload = _payload(t)
        if header.cty.upper() != "JWT":
            break
        t = _token(payload.decode("utf-8", "replace"))
    return decoded, _json_object(payload)


def _claims_hold(payload: dict[str, Any], c: _Constraints) -> bool:
    """iss and aud as constrained; exp and nbf against the constraint's time (topdown)."""
    if c.iss and payload.get("iss") != c.iss:
        return False
    if "aud" in payload:
        aud = payload["aud"]
        if not (aud == c.aud if isinstance(aud, str) else isinstance(aud, list) and c.aud in aud):
            return False
    elif c.aud:
        return False
    now = c.time / 1e9
    for claim in ("exp", "nbf"):
        if claim not in payload:
            continue
        v = payload[claim]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BuiltinError(f"{claim} value must be a number")
        if (now >= v) if claim == "exp" else (now < v):
            return False
    return True
