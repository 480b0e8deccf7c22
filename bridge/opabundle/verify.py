"""Verify signed bundles the way an OPA agent does (v1/bundle/verify.go, bundle.go `Reader.Read`).

The checks run in OPA's order, so a bundle fails here with the same cause as on an agent:
1. exactly one signatures file (basename `.signatures.json`, any directory) holding exactly one JWS;
2. the key id: the configured `keyid` wins, else the JWS header `kid`, else the deprecated `keyid`
   claim (OPA ignores the header kid when a keyid is configured);
3. the JWS signature, with the *configured* key's algorithm (OPA never trusts the header `alg`; we
   additionally refuse a header that names another algorithm, so such a bundle fails loudly here
   instead of as a confusing bad signature);
4. the scope, compared strictly: no configured scope means the bundle must carry none either;
5. every file, in archive order: listed in the signature, and its digest matches (hashing.py);
6. no file listed in the signature is absent from the bundle.
Messages start with their subject and say what was wanted and what was got.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

import msgspec
from jwt.algorithms import get_default_algorithms

from bridge.kernel.errors import GroqPolicyError
from bridge.opabundle.archive import BundleArchiveError, bundle_path, read_bundle
from bridge.opabundle.hashing import (
    HASH_ALGORITHMS,
    BundleHashError,
    file_digest,
    is_signatures_file,
    signed_name,
)
from bridge.opabundle.keys import VerificationKey

_DEFAULT_PLUGINS = ("", "_default")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class BundleVerificationError(GroqPolicyError):
    """A bundle's signature does not check out; the subclass says which check failed."""

    status = 422


class UnsignedBundleError(BundleVerificationError):
    """No `.signatures.json` (or one with no `signatures` member at all)."""


class MalformedSignatureError(BundleVerificationError):
    """The signatures file or its JWS cannot be decoded, or holds zero or several JWS."""


class UnknownKeyError(BundleVerificationError):
    """The key id the signature names (or the configured one) is not among the known keys."""


class AlgorithmMismatchError(BundleVerificationError):
    """The JWS header names another algorithm than the one configured for its key."""


class BadSignatureError(BundleVerificationError):
    """The JWS signature does not verify with the key: wrong key or altered header/payload."""


class ScopeMismatchError(BundleVerificationError):
    """The signed scope differs from the configured one."""


class DigestMismatchError(BundleVerificationError):
    """A file's content does not match its signed digest: the bundle was altered."""


class FileSetMismatchError(BundleVerificationError):
    """The bundle's files and the signature's file list differ."""


class UnsignedFileError(FileSetMismatchError):
    """A file in the bundle is not listed in the signature (added after signing)."""


class MissingFileError(FileSetMismatchError):
    """A file listed in the signature is not in the bundle (removed after signing)."""


class UnreadableBundleError(BundleVerificationError):
    """The archive or a structured file in it cannot be read, so nothing can be verified."""


class SignedFile(msgspec.Struct, frozen=True):
    name: str
    hash: str = ""
    algorithm: str = ""


class SignaturePayload(msgspec.Struct, frozen=True):
    """The decoded JWS payload of a verified bundle (OPA's `DecodedSignature`)."""

    files: tuple[SignedFile, ...] = ()
    keyid: str = ""
    scope: str = ""
    iat: int = 0
    iss: str = ""


class _SignaturesFile(msgspec.Struct):
    signatures: list[str] | None = None
    plugin: str = ""


def keyring(*keys: VerificationKey) -> dict[str, VerificationKey]:
    """Keys by id, the shape `verify_bundle` takes (OPA's top-level `keys` config)."""
    return {key.kid: key for key in keys}


def _b64decode(part: str, what: str) -> bytes:
    # RawURLEncoding, as in Go: no padding, no characters outside the URL-safe alphabet.
    try:
        if "=" in part:
            raise ValueError("padding is not allowed")
        if not _B64URL.fullmatch(part):
            raise ValueError("characters outside the base64url alphabet")
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedSignatureError(f".signatures.json: failed to base64 decode JWT {what}: {exc}") from exc


def _signatures(files: Mapping[str, bytes]) -> str:
    """The one JWS of the bundle."""
    paths = [path for path in files if is_signatures_file(path)]
    if not paths:
        raise UnsignedBundleError("bundle missing .signatures.json file")
    if len(paths) > 1:
        raise MalformedSignatureError(f"bundle contains multiple signatures files: {paths[0]} and {paths[1]}")
    try:
        doc = msgspec.json.decode(files[paths[0]], type=_SignaturesFile)
    except msgspec.DecodeError as exc:
        raise MalformedSignatureError(f".signatures.json: cannot decode: {exc}") from exc
    if doc.signatures is None and not doc.plugin:
        raise UnsignedBundleError('.signatures.json: no "signatures" member (bundle is unsigned)')
    if doc.plugin not in _DEFAULT_PLUGINS:
        raise MalformedSignatureError(
            f'.signatures.json: unsupported signing plugin (want: "" or "_default", got: {doc.plugin!r})'
        )
    tokens = doc.signatures or []
    if not tokens:
        raise MalformedSignatureError(".signatures.json: missing JWT (expected exactly one)")
    if len(tokens) > 1:
        raise MalformedSignatureError(".signatures.json: multiple JWTs not supported (expected exactly one)")
    return tokens[0]


def _header(part: str) -> dict[str, Any]:
    try:
        header = json.loads(_b64decode(part, "header"))
    except ValueError as exc:
        raise MalformedSignatureError(f".signatures.json: JWT header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise MalformedSignatureError(f".signatures.json: JWT header is not a JSON object (got: {header!r})")
    return header


def _payload(part: str) -> SignaturePayload:
    try:
        return msgspec.json.decode(_b64decode(part, "payload"), type=SignaturePayload)
    except msgspec.DecodeError as exc:
        raise MalformedSignatureError(f".signatures.json: cannot decode JWT payload: {exc}") from exc


def _check_token(
    token: str, keys: Mapping[str, VerificationKey], keyid: str | None, scope: str | None
) -> SignaturePayload:
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedSignatureError(
            f".signatures.json: failed to split compact JWT (want: 3 dot-separated parts, got: {len(parts)})"
        )
    header, payload = _header(parts[0]), _payload(parts[1])
    kid = keyid or header.get("kid") or payload.keyid
    if not isinstance(kid, str):
        raise MalformedSignatureError(f'.signatures.json: JWT header "kid" is not a string (got: {kid!r})')
    if not kid:
        raise UnknownKeyError("signature: no key id (want: a configured keyid, a JWT kid header or a keyid claim)")
    key = keys.get(kid)
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        raise UnknownKeyError(f"{kid}: verification key not found (known key ids: {known})")
    if header.get("alg") != key.alg:
        raise AlgorithmMismatchError(f"{kid}: algorithm mismatch (want: {key.alg}, got: {header.get('alg')!r})")
    signature = _b64decode(parts[2], "signature")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii", errors="replace")
    if not get_default_algorithms()[key.alg].verify(signing_input, key.public_key, signature):
        raise BadSignatureError(f"{kid}: failed to verify JWT signature ({key.alg}): wrong key or altered signature")
    want_scope = scope or ""
    if payload.scope != want_scope:
        raise ScopeMismatchError(f"signature: scope mismatch (want: {want_scope!r}, got: {payload.scope!r})")
    return payload


def _check_files(files: Mapping[str, bytes], payload: SignaturePayload) -> None:
    signed = {entry.name: entry for entry in payload.files}
    for path, content in files.items():
        if is_signatures_file(path):
            continue
        entry = signed.get(signed_name(path))
        if entry is None:
            hint = " (the signature lists it with a leading slash, which OPA never matches)" if path in signed else ""
            raise UnsignedFileError(f"{path}: not included in bundle signature{hint}")
        if not entry.algorithm:
            raise MalformedSignatureError(f"{path}: no hashing algorithm provided in bundle signature")
        if entry.algorithm not in HASH_ALGORITHMS:
            raise MalformedSignatureError(f"{path}: unsupported hashing algorithm: {entry.algorithm}")
        try:
            want = bytes.fromhex(entry.hash)
        except ValueError as exc:
            raise MalformedSignatureError(f"{path}: signed hash is not hex (got: {entry.hash!r})") from exc
        try:
            got = file_digest(path, content, entry.algorithm)
        except BundleHashError as exc:
            raise UnreadableBundleError(str(exc)) from exc
        if bytes.fromhex(got) != want:
            raise DigestMismatchError(f"{path}: digest mismatch (want: {want.hex()}, got: {got})")
        del signed[entry.name]
    if signed:
        missing = ", ".join("/" + name for name in sorted(signed))
        raise MissingFileError(f"{missing}: specified in bundle signature but not found in bundle")


def verify_bundle(
    files: Mapping[str, bytes],
    keys: Mapping[str, VerificationKey],
    *,
    keyid: str | None = None,
    scope: str | None = None,
) -> SignaturePayload:
    """The verified payload of a signed bundle, or the BundleVerificationError OPA would hit first.

    keys: verification keys by id. keyid: like an agent's `signing.keyid`, forces that key
    regardless of the JWS kid. scope: like `signing.scope`; None means the bundle must be unscoped.
    """
    try:
        canonical = {bundle_path(name): content for name, content in files.items()}
    except BundleArchiveError as exc:
        raise UnreadableBundleError(str(exc)) from exc
    payload = _check_token(_signatures(canonical), keys, keyid, scope)
    _check_files(canonical, payload)
    return payload


def verify_archive(
    data: bytes,
    keys: Mapping[str, VerificationKey],
    *,
    keyid: str | None = None,
    scope: str | None = None,
) -> SignaturePayload:
    """`verify_bundle` for a tar.gz; an unreadable archive is an UnreadableBundleError."""
    try:
        files = read_bundle(data)
    except BundleArchiveError as exc:
        raise UnreadableBundleError(str(exc)) from exc
    return verify_bundle(files, keys, keyid=keyid, scope=scope)
