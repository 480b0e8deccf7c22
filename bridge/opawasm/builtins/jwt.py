"""io.jwt.* builtins (topdown tokens.go): decode, verify_{hs,rs,ps,es}{256,384,512}, verify_eddsa,
decode_verify, encode_sign / encode_sign_raw. Cryptography via PyJWT's algorithms on pyca."""

from __future__ import annotations

import base64
import binascii
import json as _json
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK, PyJWKSet
from jwt.algorithms import get_default_algorithms

from bridge.opawasm.builtins.operands import need_obj, need_str
from bridge.opawasm.builtins.registry import Builtin, EvalContext, builtin
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import to_json


def _b64url(s: str) -> bytes:
    s = s.rstrip("=")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise BuiltinError("illegal base64 data") from None


def _split(token: Any) -> tuple[str, str, str]:
    t = need_str(token, 1)
    if "." not in t:
        raise BuiltinError("encoded JWT had no period separators")
    parts = t.split(".")
    if len(parts) != 3:
        raise BuiltinError(f"encoded JWT must have 3 sections, found {len(parts)}")
    return parts[0], parts[1], parts[2]


def _json_obj(raw: bytes, what: str) -> dict[str, Any]:
    try:
        v = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BuiltinError(f"JWT {what} had invalid encoding") from None
    if not isinstance(v, dict):
        raise BuiltinError(f"JWT {what} must be an object")
    return v


def _decode(token: Any) -> list[Any]:
    h, p, s = _split(token)
    header = _json_obj(_b64url(h), "header")
    payload_raw = _b64url(p)
    if header.get("cty") == "JWT":
        return _decode(payload_raw.decode().strip("\"'"))
    payload = _json_obj(payload_raw, "payload")
    return [header, payload, _b64url(s).hex()]


@builtin("io.jwt.decode")
def jwt_decode(ctx: EvalContext, token: Any) -> list[Any]:
    return _decode(token)


_ALGORITHMS = get_default_algorithms()


def _alg_obj(alg: str) -> Any:
    if alg not in _ALGORITHMS:
        raise BuiltinError(f"unsupported algorithm {alg}")
    return _ALGORITHMS[alg]


def _public_keys(material: str) -> list[Any]:
    """Keys from a PEM certificate / PEM public key, or a JWK / JWKS document."""
    m = material.strip()
    if m.startswith("{"):
        try:
            doc = _json.loads(m)
            if "keys" in doc:
                return [k.key for k in PyJWKSet.from_dict(doc).keys]
            return [PyJWK.from_dict(doc).key]
        except Exception as exc:  # noqa: BLE001 - PyJWT raises many kinds for a bad key: all are bad input
            raise BuiltinError(f"failed to parse a JWK key (set): {exc}") from None
    data = m.encode()
    try:
        if b"CERTIFICATE" in data:
            return [x509.load_pem_x509_certificate(data).public_key()]
        return [load_pem_public_key(data)]
    except ValueError as exc:
        raise BuiltinError(f"failed to extract a Key from the PEM certificate: {exc}") from None


def _verify_sig(alg: str, signing_input: bytes, sig: bytes, key_material: str) -> bool:
    a = _alg_obj(alg)
    if alg.startswith("HS"):
        key = a.prepare_key(key_material)
        return a.verify(signing_input, key, sig)
    for key in _public_keys(key_material):
        try:
            if a.verify(signing_input, key, sig):
                return True
        except Exception:  # noqa: BLE001 - wrong key type for this alg: not verified by this key
            continue
    return False


def _verify(alg: str) -> Builtin:
    def fn(ctx: EvalContext, token: Any, key: Any) -> bool:
        h, p, s = _split(token)
        key = need_str(key, 2)
        sig = _b64url(s)
        _json_obj(_b64url(h), "header")  # a token with a broken header is an error, not "not verified"
        return _verify_sig(alg, f"{h}.{p}".encode(), sig, key)

    return fn


for _a in ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"):
    builtin(f"io.jwt.verify_{_a.lower()}")(_verify(_a))
builtin("io.jwt.verify_eddsa")(_verify("EdDSA"))

_CONSTRAINTS = ("cert", "secret", "alg", "iss", "aud", "time")


@builtin("io.jwt.decode_verify")
def decode_verify(ctx: EvalContext, token: Any, constraints: Any) -> list[Any]:
    constraints = need_obj(constraints, 2)
    for k in constraints:
        if k not in _CONSTRAINTS:
            raise BuiltinError(f"unknown token validation constraint: {k}")
    cert, secret = constraints.get("cert"), constraints.get("secret")
    if (cert is None) == (secret is None):
        raise BuiltinError("exactly one of cert or secret must be specified")
    verified = _verified(token, constraints.get("alg"), cert, secret)
    if verified is None:
        return [False, {}, {}]
    header, raw = verified
    payload = _json_obj(raw, "payload")
    if not _claims_hold(payload, constraints, constraints.get("time", ctx.now_ns)):
        return [False, {}, {}]
    return [True, header, payload]


def _verified(token: Any, want_alg: Any, cert: Any, secret: Any) -> tuple[dict[str, Any], bytes] | None:
    """The header and payload bytes of `token` when its signature checks out, and that of every
    token nested in it (`cty: JWT`); None when one does not."""
    t = token
    while True:
        h, p, s = _split(t)
        header = _json_obj(_b64url(h), "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or (want_alg and want_alg != alg):
            return None
        sig = _b64url(s)
        key = secret if alg.startswith("HS") else cert
        if key is None or not _verify_sig(alg, f"{h}.{p}".encode(), sig, key):
            return None
        raw = _b64url(p)
        if str(header.get("cty", "")).upper() != "JWT":
            return header, raw
        t = raw.decode()


def _claims_hold(payload: dict[str, Any], constraints: dict[str, Any], now_ns: Any) -> bool:
    """iss and aud as constrained; exp and nbf against `now_ns` (topdown's validate)."""
    iss = constraints.get("iss")
    if iss and payload.get("iss") != iss:
        return False
    aud_c = constraints.get("aud", "")
    if "aud" in payload:
        aud = payload["aud"]
        if isinstance(aud, str):
            if aud != aud_c:
                return False
        elif not isinstance(aud, list) or aud_c not in aud:
            return False
    elif aud_c:
        return False
    secs = now_ns / 1e9
    for claim in ("exp", "nbf"):
        if claim not in payload:
            continue
        v = payload[claim]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise BuiltinError(f"{claim} value must be a number")
        if (secs >= v) if claim == "exp" else (secs < v):
            return False
    return True


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _sign(alg: str, signing_input: bytes, jwk: dict[str, Any]) -> bytes:
    a = _alg_obj(alg)
    if alg.startswith("HS"):
        k = jwk.get("k")
        if not isinstance(k, str):
            raise BuiltinError("invalid JWK: missing k")
        return a.sign(signing_input, _b64url(k))
    try:
        key = PyJWK.from_dict(jwk, algorithm=alg).key
    except Exception as exc:  # noqa: BLE001 - PyJWT raises many kinds for a bad key: all are bad input
        raise BuiltinError(f"invalid JWK: {exc}") from None
    return a.sign(signing_input, key)


@builtin("io.jwt.encode_sign_raw")
def encode_sign_raw(ctx: EvalContext, header: Any, payload: Any, key: Any) -> str:
    k, h, p = need_str(key, 3), need_str(header, 1), need_str(payload, 2)
    jwk = _json_obj(k.encode(), "key")
    hdr = _json_obj(h.encode(), "header")
    alg = hdr.get("alg")
    if not isinstance(alg, str):
        raise BuiltinError("missing or invalid 'alg' header")
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
