"""Keys and signatures for the io.jwt builtins (topdown tokens.go's parseKeysFromCertOrJWK, and the
checks of rsa/ecdsa/ed25519/hmac as topdown and jwx's jwsbb run them), on pyca/cryptography.

Key material is a PEM block that must be the whole text (a CERTIFICATE or a PUBLIC KEY), or a JWK
or JWK set (PyJWT reads it, as jwx does for OPA); keys of a set whose `alg` OPA does not know are
skipped. A signature that does not check out, or a key of the wrong type, is "not verified".
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import load_der_public_key
from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWTError

from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.encoding import pem_decode

ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                        "HS256", "HS384", "HS512", "EdDSA"})
_HASHES: dict[str, Any] = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
# by name: hmac.digest then signs in one OpenSSL call instead of building an HMAC object in Python
_DIGESTS = {"256": "sha256", "384": "sha384", "512": "sha512"}


@dataclass(frozen=True)
class VerificationKey:
    key: Any
    alg: str = ""
    kid: str = ""


# Parsed key material by its text: a policy verifies every request's token against the same
# certificate or JWK set, and parsing it (PEM, DER, a JWK set) costs about as much as the RSA check
# itself. Keys are immutable; a refusal is not kept (it raises) and is simply parsed again. Only
# material up to KEY_CACHE_MAX_TEXT is kept, so the cache holds at most ~8 MiB of text.
KEY_CACHE_SIZE = 128
KEY_CACHE_MAX_TEXT = 64 * 1024


def keys_from_material(material: str) -> Sequence[VerificationKey]:
    """parseKeysFromCertOrJWK: a PEM block (nothing after it), else a JWK or JWK set."""
    if len(material) <= KEY_CACHE_MAX_TEXT:
        return _cached_keys(material)
    return _parse_keys(material)


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _cached_keys(material: str) -> tuple[VerificationKey, ...]:
    return _parse_keys(material)


def _parse_keys(material: str) -> tuple[VerificationKey, ...]:
    block, rest = pem_decode(material.encode())
    if block is not None:
        if rest:
            raise BuiltinError("extra data after a PEM certificate block")
        if block.type == "CERTIFICATE":
            try:
                return (VerificationKey(x509.load_der_x509_certificate(block.data).public_key()),)
            except ValueError as exc:
                raise BuiltinError(f"failed to parse a PEM certificate: {exc}") from None
        if block.type == "PUBLIC KEY":
            try:
                return (VerificationKey(load_der_public_key(block.data)),)
            except (ValueError, TypeError) as exc:
                raise BuiltinError(f"failed to parse a PEM public key: {exc}") from None
        raise BuiltinError("failed to extract a Key from the PEM certificate")
    try:
        doc = json.loads(material)
        jwks = PyJWKSet.from_dict(doc).keys if isinstance(doc, dict) and "keys" in doc else [PyJWK.from_dict(doc)]
    except (ValueError, TypeError, KeyError, PyJWTError) as exc:
        raise BuiltinError(f"failed to parse a JWK key (set): {exc}") from None
    out = []
    for k in jwks:
        alg = str(k._jwk_data.get("alg") or "")
        if alg and alg not in ALGORITHMS:
            continue  # a key for an algorithm OPA does not know
        out.append(VerificationKey(k.key, alg, str(k.key_id or "")))
    return tuple(out)


def check(alg: str, key: Any, signing_input: bytes, signature: bytes, *, pss_auto: bool = False) -> bool:
    """Does `signature` over `signing_input` check out with `key` under `alg`? `pss_auto`: the
    verify_ps* builtins accept any PSS salt length (topdown passes nil options); decode_verify
    wants the digest's length (jwsbb)."""
    family, size = alg[:2], alg[2:]
    try:
        if family == "HS" and isinstance(key, (bytes, str)) and size in _DIGESTS:
            secret = key.encode() if isinstance(key, str) else key
            return hmac.compare_digest(hmac.digest(secret, signing_input, _DIGESTS[size]), signature)
        if family in ("RS", "PS") and isinstance(key, rsa.RSAPublicKey) and size in _HASHES:
            h = _HASHES[size]()
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if family == "PS":
                pad = padding.PSS(padding.MGF1(h), padding.PSS.AUTO if pss_auto else padding.PSS.DIGEST_LENGTH)
            key.verify(signature, signing_input, pad, h)
            return True
        if family == "ES" and isinstance(key, ec.EllipticCurvePublicKey) and size in _HASHES:
            return _check_ecdsa(key, _HASHES[size](), signing_input, signature)
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signing_input)
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _check_ecdsa(key: ec.EllipticCurvePublicKey, h: hashes.HashAlgorithm, data: bytes, signature: bytes) -> bool:
    n = len(signature) // 2  # r || s, each half the signature (topdown's verifyES)
    if n == 0:
        return False
    r, s = int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big")
    key.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(h))
    return True


def by_kid(kid: str, keys: Sequence[VerificationKey]) -> VerificationKey | None:
    return next((k for k in keys if k.kid == kid), None)


def verify_with(keys: Sequence[VerificationKey], header_alg: str, kid: str, alg: str, signing_input: bytes,
                signature: bytes, *, pss_auto: bool) -> bool:
    """topdown's key choice: the key whose kid the header names, else every key whose alg is the
    header's (or that names none)."""
    if kid:
        named = by_kid(kid, keys)
        if named is not None:
            return check(alg, named.key, signing_input, signature, pss_auto=pss_auto)
    for k in keys:
        if k.alg and k.alg != header_alg:
            continue
        if check(alg, k.key, signing_input, signature, pss_auto=pss_auto):
            return True
    return False
