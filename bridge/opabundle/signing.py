"""Sign bundles exactly as `opa build --signing-key` does (v1/bundle/sign.go, bundle.go).

The output is byte-for-byte what opa v1.22.3 writes for the same files and key id, so RS256
bundles (PKCS#1 v1.5 signatures are deterministic) re-signed here are identical to OPA's:
- JWS header `{"alg":"RS256","kid":"<kid>","typ":"JWT"}`: jwx's fast path writes these three
  members in this order (and only with kids that need no escaping; keys.check_kid ensures that).
- Payload: the claims sorted by name (jwx sorts them), compact, strings escaped by Go's
  `json.Marshal` (HTML escaping on: `<` becomes `\\u003c`); each file entry is
  `{"name","hash","algorithm"}` in struct order, names without a leading slash.
- Files are listed in OPA's order: Rego modules, data.json, wasm, plans, `.manifest`, then
  anything else (OPA verifies every file it reads, so every file must be listed).
- The deprecated `keyid` claim is always included, as `opa build` does without a claims file,
  so that agents old enough to ignore the header `kid` still find the key.
- `.signatures.json` is Go's `json.MarshalIndent(.., "", " ")` of `{"signatures": [jws],
  "plugin": "_default"}`; OPA maps the plugin name `_default` to its built-in verifier.
"""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Mapping

from jwt.algorithms import get_default_algorithms

from bridge.opabundle.archive import bundle_path, read_bundle, write_bundle
from bridge.opabundle.hashing import (
    DEFAULT_HASH_ALGORITHM,
    file_digest,
    go_json_string,
    is_signatures_file,
    signed_name,
)
from bridge.opabundle.keys import SigningKey

SIGNATURES_PATH = "/.signatures.json"
DEFAULT_PLUGIN = "_default"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _opa_rank(path: str) -> int:
    """Position of a file's kind in OPA's signature file list (GenerateSignature + hashBundleFiles)."""
    base = posixpath.basename(path)
    if path.endswith(".rego"):
        return 0
    if base == "data.json":
        return 1
    if base == "policy.wasm":
        return 2
    if base in ("plan.json", "plan.pb"):
        return 3
    if base in (".manifest", ".manifest.pb"):
        return 4
    return 5


def encode_payload(files: list[tuple[str, str]], claims: Mapping[str, str | int]) -> bytes:
    """The JWT claims as jwx serialises them: sorted names, compact, Go string escaping with HTML on."""
    members = {
        "files": "["
        + ",".join(
            f'{{"name":{go_json_string(name, escape_html=True)},'
            f'"hash":{go_json_string(digest, escape_html=True)},'
            f'"algorithm":{go_json_string(DEFAULT_HASH_ALGORITHM, escape_html=True)}}}'
            for name, digest in files
        )
        + "]"
    }
    for name, value in claims.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"claim {name!r}: want str or int, got {type(value).__name__}")
        members[name] = str(value) if isinstance(value, int) else go_json_string(value, escape_html=True)
    body = ",".join(f"{go_json_string(k, escape_html=True)}:{members[k]}" for k in sorted(members))
    return ("{" + body + "}").encode("utf-8")


def signatures_file(token: str) -> bytes:
    """`.signatures.json` exactly as OPA's bundle writer formats it."""
    return f'{{\n "signatures": [\n  "{token}"\n ],\n "plugin": "{DEFAULT_PLUGIN}"\n}}'.encode("ascii")


def sign_token(payload: bytes, key: SigningKey) -> str:
    """A compact JWS over `payload` with header {"alg","kid","typ":"JWT"}, signed by PyJWT's algorithm."""
    header = f'{{"alg":"{key.alg}","kid":"{key.kid}","typ":"JWT"}}'.encode("ascii")
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    signature = get_default_algorithms()[key.alg].sign(signing_input.encode("ascii"), key.private_key)
    return f"{signing_input}.{b64url(signature)}"


def sign_bundle(
    files: Mapping[str, bytes],
    key: SigningKey,
    *,
    scope: str | None = None,
    iss: str | None = None,
    iat: int | None = None,
) -> dict[str, bytes]:
    """`files` (any existing signatures file dropped) plus a fresh `/.signatures.json`.

    scope: agents must be configured with the same scope (OPA compares it strictly, and an
    agent with no scope rejects a scoped bundle). iss/iat are informational; OPA never checks them.
    """
    unsigned: dict[str, bytes] = {}
    for name, content in files.items():
        path = bundle_path(name)
        if not is_signatures_file(path):
            unsigned[path] = content
    ordered = sorted(unsigned, key=_opa_rank)  # stable: keeps the given order within a kind
    entries = [(signed_name(path), file_digest(path, unsigned[path])) for path in ordered]
    claims: dict[str, str | int] = {"keyid": key.kid}
    if scope:
        claims["scope"] = scope
    if iss:
        claims["iss"] = iss
    if iat is not None:
        claims["iat"] = int(iat)
    token = sign_token(encode_payload(entries, claims), key)
    return {**unsigned, SIGNATURES_PATH: signatures_file(token)}


def sign_archive(
    data: bytes, key: SigningKey, *, scope: str | None = None, iss: str | None = None, iat: int | None = None
) -> bytes:
    """A bundle tar.gz re-written (deterministically) with a fresh signature replacing any old one."""
    return write_bundle(sign_bundle(read_bundle(data), key, scope=scope, iss=iss, iat=iat))
