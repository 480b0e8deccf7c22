"""crypto.* builtins (topdown crypto.go): digests, HMACs, x509/keys parsed where feasible."""

from __future__ import annotations

import base64
import hashlib
import hmac as _hmac
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.opawasm.builtins.operands import need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.builtins.x509_json import private_key_json
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.encoding import b64decode
from bridge.opawasm.gocompat.errors import GoError


def _digest(name: str):
    def fn(ctx: EvalContext, s: Any) -> str:
        return hashlib.new(name, need_str(s, 1).encode()).hexdigest()

    return fn


for _alg in ("md5", "sha1", "sha256"):
    builtin(f"crypto.{_alg}")(_digest(_alg))


def _hmac_fn(name: str):
    def fn(ctx: EvalContext, x: Any, key: Any) -> str:
        return _hmac.new(need_str(key, 2).encode(), need_str(x, 1).encode(), name).hexdigest()

    return fn


for _alg in ("md5", "sha1", "sha256", "sha512"):
    builtin(f"crypto.hmac.{_alg}")(_hmac_fn(_alg))


@builtin("crypto.hmac.equal")
def hmac_equal(ctx: EvalContext, a: Any, b: Any) -> bool:
    return _hmac.compare_digest(need_str(a, 1).encode(), need_str(b, 2).encode())


@builtin("crypto.x509.parse_rsa_private_key")
def parse_rsa_private_key(ctx: EvalContext, s: Any) -> dict[str, Any]:
    pem = need_str(s, 1).encode()
    if b"-----BEGIN" not in pem:
        try:
            pem = b64decode(pem)
        except GoError as exc:
            raise BuiltinError(str(exc)) from None
    try:
        key = load_pem_private_key(pem, None)
    except ValueError as exc:
        raise BuiltinError(f"x509: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BuiltinError("x509: not an RSA private key")
    n = key.private_numbers()

    def b64(i: int) -> str:
        return base64.urlsafe_b64encode(i.to_bytes((i.bit_length() + 7) // 8, "big")).decode().rstrip("=")

    return {"kty": "RSA", "n": b64(n.public_numbers.n), "e": b64(n.public_numbers.e), "d": b64(n.d),
            "p": b64(n.p), "q": b64(n.q), "dp": b64(n.dmp1), "dq": b64(n.dmq1), "qi": b64(n.iqmp)}


@builtin("crypto.parse_private_keys")
def parse_private_keys(ctx: EvalContext, s: Any) -> Any:
    """PEM (or base64 of PEM) private keys: RSA PRIVATE KEY, PRIVATE KEY (PKCS#8), EC PRIVATE KEY
    blocks; other blocks are skipped. "" gives null and no keys an empty array, as in topdown."""
    text = need_str(s, 1)
    if text == "":
        return None
    data = text.encode()
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        pass
    out = []
    for m in re.finditer(rb"-----BEGIN ([^-]+)-----.*?-----END \1-----", data, re.S):
        if m.group(1) not in (b"RSA PRIVATE KEY", b"PRIVATE KEY", b"EC PRIVATE KEY"):
            continue
        try:
            out.append(private_key_json(load_pem_private_key(m.group(0), None)))
        except (ValueError, TypeError) as exc:
            raise BuiltinError(f"failed to parse private key: {exc}") from None
    return out
