"""io.jwt.encode_sign and io.jwt.encode_sign_raw (topdown tokens.go's commonBuiltinJWTEncodeSign),
signing with PyJWT's algorithms on pyca/cryptography."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from jwt import PyJWK
from jwt.algorithms import get_default_algorithms

from bridge.opawasm.builtins.jwt import b64url_decode
from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import to_json

_ALGORITHMS = get_default_algorithms()


def _alg_obj(alg: str) -> Any:
    if alg not in _ALGORITHMS:
        raise BuiltinError(f"unknown JWS algorithm: {alg}")
    return _ALGORITHMS[alg]


def _header_alg(header: str) -> str:
    """The header's alg as jwx's jwsbb reads it, with its errors."""
    if header.strip() == "":
        raise BuiltinError("missing or invalid 'alg' header: cannot parse JSON: cannot parse empty string; unparsed tail: \"\"")
    try:
        v = msgspec.json.decode(header.encode())
    except msgspec.DecodeError:
        if header.lstrip().startswith("{"):
            raise BuiltinError("missing or invalid 'alg' header: cannot parse JSON") from None
        v = None
    alg = v.get("alg") if isinstance(v, dict) else None
    if not isinstance(alg, str):
        raise BuiltinError("missing or invalid 'alg' header: jwsbb: header \"alg\" not found")
    return alg


def _object(text: str, what: str) -> dict[str, Any]:
    try:
        v = msgspec.json.decode(text.encode())
    except msgspec.DecodeError:
        raise BuiltinError(f"JWT {what} had invalid encoding") from None
    if not isinstance(v, dict):
        raise BuiltinError(f"JWT {what} must be an object")
    return v


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _sign(alg: str, signing_input: bytes, jwk: dict[str, Any]) -> bytes:
    a = _alg_obj(alg)
    if alg.startswith("HS"):
        k = jwk.get("k")
        if not isinstance(k, str):
            raise BuiltinError("invalid JWK: missing k")
        return a.sign(signing_input, b64url_decode(k))
    try:
        key = PyJWK.from_dict(jwk, algorithm=alg).key
    except Exception as exc:  # noqa: BLE001 - PyJWT raises many kinds for a bad key: all are bad input
        raise BuiltinError(f"invalid JWK: {exc}") from None
    return a.sign(signing_input, key)


@builtin("io.jwt.encode_sign_raw")
def encode_sign_raw(ctx: EvalContext, header: Any, payload: Any, key: Any) -> str:
    k, h, p = need_str(key, 3), need_str(header, 1), need_str(payload, 2)
    jwk = _object(k, "key")
    alg = _header_alg(h)
    hdr = msgspec.json.decode(h.encode())  # _header_alg found it to be an object
    typ = hdr.get("typ")
    if not isinstance(typ, str) or typ == "JWT":
        try:
            msgspec.json.decode(p.encode())
        except msgspec.DecodeError:
            raise BuiltinError("type is JWT but payload is not JSON") from None
    si = f"{_b64e(h.encode())}.{_b64e(p.encode())}"
    return si + "." + _b64e(_sign(alg, si.encode(), jwk))


@builtin("io.jwt.encode_sign")
def encode_sign(ctx: EvalContext, header: Any, payload: Any, key: Any) -> str:
    if not all(isinstance(x, dict) for x in (header, payload, key)):
        raise BuiltinError("io.jwt.encode_sign: operands must be objects")
    h = msgspec.json.encode(to_json(header), order="sorted")
    p = msgspec.json.encode(to_json(payload), order="sorted")
    si = f"{_b64e(h)}.{_b64e(p)}"
    return si + "." + _b64e(_sign(str(header.get("alg")), si.encode(), to_json(key)))
