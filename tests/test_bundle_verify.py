"""Verification failures as a table: each case names the exact error class and message."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.kernel.errors import GroqPolicyError
from bridge.opabundle.archive import write_bundle
from bridge.opabundle.keys import SigningKey, VerificationKey, generate_keypair
from bridge.opabundle.signing import sign_bundle, sign_token
from bridge.opabundle.verify import (
    AlgorithmMismatchError,
    BadSignatureError,
    BundleVerificationError,
    DigestMismatchError,
    FileSetMismatchError,
    MalformedSignatureError,
    MissingFileError,
    ScopeMismatchError,
    SignaturePayload,
    UnknownKeyError,
    UnreadableBundleError,
    UnsignedBundleError,
    UnsignedFileError,
    keyring,
    verify_archive,
    verify_bundle,
)

POLICY = b"package x.y\n\nallow if input.user == data.x.y.admin\n"
FILES = {
    "/x/y/policy.rego": POLICY,
    "/data.json": b'{"x": {"y": {"admin": "alice"}}}',
    "/.manifest": b'{"roots":["x"],"revision":"r1"}',
}


KEYS: dict[str, SigningKey] = {
    "alpha": generate_keypair("RS256", kid="alpha"),
    "beta": generate_keypair("ES256", kid="beta"),
    "gamma": generate_keypair("RS256", kid="gamma"),
}


@pytest.fixture
def keys() -> dict[str, SigningKey]:
    return KEYS


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jws_of(files: dict[str, bytes]) -> str:
    return json.loads(files["/.signatures.json"])["signatures"][0]


def with_signatures(files: dict[str, bytes], doc: Any) -> dict[str, bytes]:
    return {**files, "/.signatures.json": json.dumps(doc).encode()}


def edit_payload(files: dict[str, bytes], edit: Callable[[dict], None], resign: SigningKey | None = None) -> dict[str, bytes]:
    """Re-encode the JWS payload after `edit`; keep the old signature (which then fails) unless `resign`."""
    header, payload, sig = jws_of(files).split(".")
    claims = json.loads(unb64(payload))
    edit(claims)
    if resign is not None:
        return with_signatures(files, {"signatures": [sign_token(json.dumps(claims).encode(), resign)]})
    return with_signatures(files, {"signatures": [f"{header}.{b64(json.dumps(claims).encode())}.{sig}"]})


def edit_header(files: dict[str, bytes], header: dict) -> dict[str, bytes]:
    _, payload, sig = jws_of(files).split(".")
    return with_signatures(files, {"signatures": [f"{b64(json.dumps(header).encode())}.{payload}.{sig}"]})


@dataclass
class Case:
    mutate: Callable[[dict[str, bytes]], dict[str, bytes]] = lambda f: f
    keys: tuple[str, ...] = ("alpha", "beta")  # which public keys the verifier knows
    verify: dict[str, Any] = field(default_factory=dict)
    sign: dict[str, Any] = field(default_factory=dict)
    error: type[BundleVerificationError] | None = None
    message: str = ""  # exact message, or a regex when it starts with ^


def drop(path: str) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    return lambda f: {k: v for k, v in f.items() if k != path}


def put(path: str, content: bytes) -> Callable[[dict[str, bytes]], dict[str, bytes]]:
    return lambda f: {**f, path: content}


TAMPERED = POLICY.replace(b"input.user", b"input.usar")
CASES: dict[str, Case] = {
    "valid": Case(),
    "valid without leading slashes": Case(mutate=lambda f: {k.lstrip("/"): v for k, v in f.items()}),
    "valid: data.json reformatted (canonical hash)": Case(
        mutate=put("/data.json", b'{\n  "x" : { "y" : { "admin" : "alice" } }\n}\n')
    ),
    "valid with configured keyid": Case(verify={"keyid": "alpha"}),
    "valid with scope": Case(sign={"scope": "prod"}, verify={"scope": "prod"}),
    "unsigned": Case(mutate=drop("/.signatures.json"), error=UnsignedBundleError,
                     message="bundle missing .signatures.json file"),
    "signatures member absent": Case(mutate=lambda f: with_signatures(f, {}), error=UnsignedBundleError,
                                     message='.signatures.json: no "signatures" member (bundle is unsigned)'),
    "no JWT": Case(mutate=lambda f: with_signatures(f, {"signatures": []}), error=MalformedSignatureError,
                   message=".signatures.json: missing JWT (expected exactly one)"),
    "two JWTs": Case(mutate=lambda f: with_signatures(f, {"signatures": [jws_of(f), jws_of(f)]}),
                     error=MalformedSignatureError,
                     message=".signatures.json: multiple JWTs not supported (expected exactly one)"),
    "two signatures files": Case(mutate=lambda f: {**f, "/x/.signatures.json": f["/.signatures.json"]},
                                 error=MalformedSignatureError,
                                 message="bundle contains multiple signatures files: /.signatures.json and /x/.signatures.json"),
    "signatures file not JSON": Case(mutate=put("/.signatures.json", b"{nope"), error=MalformedSignatureError,
                                     message="^\\.signatures\\.json: cannot decode: "),
    "signatures not strings": Case(mutate=lambda f: with_signatures(f, {"signatures": [1]}),
                                   error=MalformedSignatureError, message="^\\.signatures\\.json: cannot decode: "),
    "unknown signing plugin": Case(mutate=lambda f: with_signatures(f, {"signatures": [jws_of(f)], "plugin": "kms"}),
                                   error=MalformedSignatureError,
                                   message=".signatures.json: unsupported signing plugin (want: \"\" or \"_default\", got: 'kms')"),
    "not a compact JWS": Case(mutate=lambda f: with_signatures(f, {"signatures": ["abc.def"]}),
                              error=MalformedSignatureError,
                              message=".signatures.json: failed to split compact JWT (want: 3 dot-separated parts, got: 2)"),
    "header not base64url": Case(mutate=lambda f: with_signatures(f, {"signatures": ["a+b/.e30.c"]}),
                                 error=MalformedSignatureError,
                                 message="^\\.signatures\\.json: failed to base64 decode JWT header: "),
    "padded payload": Case(mutate=lambda f: with_signatures(f, {"signatures": ["e30.e30=.c"]}),
                           error=MalformedSignatureError,
                           message=".signatures.json: failed to base64 decode JWT payload: padding is not allowed"),
    "header not JSON": Case(mutate=lambda f: with_signatures(f, {"signatures": [b64(b"{x") + ".e30.c"]}),
                            error=MalformedSignatureError, message="^\\.signatures\\.json: JWT header is not JSON: "),
    "payload not the expected shape": Case(mutate=lambda f: edit_payload(f, lambda c: c.update(files="x")),
                                           error=MalformedSignatureError,
                                           message="^\\.signatures\\.json: cannot decode JWT payload: Expected `array`, got `str` - at `\\$\\.files`"),
    "unknown key id": Case(keys=("beta", "gamma"), error=UnknownKeyError,
                           message="alpha: verification key not found (known key ids: beta, gamma)"),
    "configured keyid unknown": Case(verify={"keyid": "zeta"}, error=UnknownKeyError,
                                     message="zeta: verification key not found (known key ids: alpha, beta)"),
    "no key id anywhere": Case(mutate=lambda f: edit_header(edit_payload(f, lambda c: c.pop("keyid")), {"alg": "RS256"}),
                               error=UnknownKeyError,
                               message="signature: no key id (want: a configured keyid, a JWT kid header or a keyid claim)"),
    "configured keyid overrides the kid header": Case(keys=("alpha", "gamma"), verify={"keyid": "gamma"},
                                                      error=BadSignatureError,
                                                      message="gamma: failed to verify JWT signature (RS256): wrong key or altered signature"),
    "wrong key under the right kid": Case(keys=("gamma-as-alpha",), error=BadSignatureError,
                                          message="alpha: failed to verify JWT signature (RS256): wrong key or altered signature"),
    "payload altered after signing": Case(mutate=lambda f: edit_payload(f, lambda c: c.update(scope="")),
                                          error=BadSignatureError,
                                          message="alpha: failed to verify JWT signature (RS256): wrong key or altered signature"),
    "algorithm mismatch: EC key for an RS256 JWS": Case(keys=("beta-as-alpha",), error=AlgorithmMismatchError,
                                                        message="alpha: algorithm mismatch (want: ES256, got: 'RS256')"),
    "algorithm mismatch: PS256 configured, RS256 signed": Case(keys=("alpha-ps256",), error=AlgorithmMismatchError,
                                                               message="alpha: algorithm mismatch (want: PS256, got: 'RS256')"),
    "algorithm none": Case(mutate=lambda f: edit_header(f, {"alg": "none", "kid": "alpha"}), error=AlgorithmMismatchError,
                           message="alpha: algorithm mismatch (want: RS256, got: 'none')"),
    "scoped bundle, verifier without scope": Case(sign={"scope": "prod"}, error=ScopeMismatchError,
                                                  message="signature: scope mismatch (want: '', got: 'prod')"),
    "wrong scope": Case(sign={"scope": "prod"}, verify={"scope": "dev"}, error=ScopeMismatchError,
                        message="signature: scope mismatch (want: 'dev', got: 'prod')"),
    "unscoped bundle, verifier wants scope": Case(verify={"scope": "prod"}, error=ScopeMismatchError,
                                                  message="signature: scope mismatch (want: 'prod', got: '')"),
    "policy tampered by one byte": Case(mutate=put("/x/y/policy.rego", TAMPERED), error=DigestMismatchError,
                                        message=f"/x/y/policy.rego: digest mismatch (want: {sha(POLICY)}, got: {sha(TAMPERED)})"),
    "data value changed": Case(mutate=put("/data.json", b'{"x": {"y": {"admin": "mallory"}}}'), error=DigestMismatchError,
                               message="^/data\\.json: digest mismatch \\(want: [0-9a-f]{64}, got: [0-9a-f]{64}\\)$"),
    "manifest changed": Case(mutate=put("/.manifest", b'{"roots":[""],"revision":"r1"}'), error=DigestMismatchError,
                             message="^/\\.manifest: digest mismatch"),
    "file added": Case(mutate=put("/x/evil.rego", b"package x\n"), error=UnsignedFileError,
                       message="/x/evil.rego: not included in bundle signature"),
    "file removed": Case(mutate=drop("/x/y/policy.rego"), error=MissingFileError,
                         message="/x/y/policy.rego: specified in bundle signature but not found in bundle"),
    "signature names a file with a leading slash": Case(
        mutate=lambda f: edit_payload(f, lambda c: c["files"][0].update(name="/x/y/policy.rego"), KEYS["alpha"]),
        error=UnsignedFileError,
        message="/x/y/policy.rego: not included in bundle signature (the signature lists it with a leading slash, which OPA never matches)"),
    "data.json no longer JSON": Case(mutate=put("/data.json", b"{"), error=UnreadableBundleError,
                                     message="^/data\\.json: invalid JSON"),
    "unsafe path": Case(mutate=put("/../etc/passwd", b""), error=UnreadableBundleError,
                        message="^'/\\.\\./etc/passwd': path must be clean and relative"),
}  # fmt: skip


def verifier_keys(names: tuple[str, ...], keys: dict[str, SigningKey]) -> dict[str, VerificationKey]:
    out: dict[str, VerificationKey] = {}
    for name in names:
        if name == "gamma-as-alpha":
            out["alpha"] = VerificationKey("alpha", "RS256", keys["gamma"].verification_key().public_pem)
        elif name == "beta-as-alpha":
            out["alpha"] = VerificationKey("alpha", "ES256", keys["beta"].verification_key().public_pem)
        elif name == "alpha-ps256":
            out["alpha"] = VerificationKey("alpha", "PS256", keys["alpha"].verification_key().public_pem)
        else:
            out[name] = keys[name].verification_key()
    return out


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_verification(case: Case, keys: dict[str, SigningKey]) -> None:
    files = case.mutate(sign_bundle(FILES, keys["alpha"], **case.sign))
    known = verifier_keys(case.keys, keys)
    if case.error is None:
        payload = verify_bundle(files, known, **case.verify)
        assert isinstance(payload, SignaturePayload)
        assert {f.name for f in payload.files} == {"x/y/policy.rego", "data.json", ".manifest"}
        assert payload.scope == case.sign.get("scope", "")
        return
    with pytest.raises(case.error) as info:
        verify_bundle(files, known, **case.verify)
    assert isinstance(info.value, BundleVerificationError) and isinstance(info.value, GroqPolicyError)
    if case.message.startswith("^"):
        assert re.search(case.message, str(info.value)), str(info.value)
    else:
        assert str(info.value) == case.message


def test_error_classes_are_distinct() -> None:
    classes = {case.error for case in CASES.values() if case.error}
    assert len(classes) == 10
    assert issubclass(UnsignedFileError, FileSetMismatchError) and issubclass(MissingFileError, FileSetMismatchError)


def test_payload_fields_and_verify_archive(keys: dict[str, SigningKey]) -> None:
    signed = sign_bundle(FILES, keys["beta"], scope="prod", iss="groqpolicy", iat=1700000000)
    payload = verify_archive(write_bundle(signed), keyring(keys["beta"].verification_key()), scope="prod")
    assert (payload.keyid, payload.scope, payload.iss, payload.iat) == ("beta", "prod", "groqpolicy", 1700000000)
    assert [f.name for f in payload.files] == ["x/y/policy.rego", "data.json", ".manifest"]
    assert all(f.algorithm == "SHA-256" for f in payload.files)
    with pytest.raises(UnreadableBundleError, match=r"^archive read failed: "):
        verify_archive(b"not a tarball", keyring(keys["beta"].verification_key()))
