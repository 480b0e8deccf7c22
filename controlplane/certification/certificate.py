"""The certificate a policy revision carries, signed with the control plane's record key.

What is signed is `groqpolicy-policy-certificate-v1` + the canonical JSON of every member but
`signature` (controlplane.infra.recordkeys.message), so anyone holding the record key's public half
can check, from the certificate alone, which checks passed on which text (`policy_sha256`), for which
policy version, what the model said and who overrode it. Ed25519 signatures are deterministic, so
the same certificate signs to the same bytes on every replica that shares the key.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from bridge.inference.wire import Finding
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.infra.recordkeys import UNSIGNED, RecordKeys

DOMAIN = "groqpolicy-policy-certificate-v1"
CERTIFICATE_VERSION = 2  # 2: a review's findings are structured (principle, severity, text); 1: sentences


class CheckResult(msgspec.Struct, kw_only=True):
    """One deterministic check as `certify.rego` reported it."""

    name: str
    passed: bool
    problems: list[str] = []
    detail: dict[str, Any] = {}


class ModelReview(msgspec.Struct, kw_only=True):
    """The model's verdict on the policy text against the principles it declares. `findings` are
    structured in version-2 certificates; a version-1 certificate's are sentences, kept as signed."""

    tier: str
    model: str
    decision: Literal["allow", "deny", "review"]
    confidence: float
    findings: list[Finding | str] = []
    rationale: str = ""
    emulated: bool = False


class Override(msgspec.Struct, kw_only=True):
    """An admin's decision to activate a policy the model review denied."""

    reason: str
    by: str
    at: str


class Signature(msgspec.Struct, kw_only=True):
    kid: str
    sig: str


class PolicyCertificate(msgspec.Struct, kw_only=True):
    """What certified one policy revision (stored with it, audited, carried in the bundle manifest)."""

    rule_id: str
    policy_version: int
    policy_name: str
    policy_sha256: str  # digest of the policy text as written (before the package is reassigned)
    tests_sha256: str = ""  # digest of its opa tests, when it has any
    principles: list[str] = []
    checks: list[CheckResult] = []
    review: ModelReview | None = None
    override: Override | None = None
    certified: bool = True  # checks passed and the review did not deny (or was overridden)
    constitutional_hash: str = CONSTITUTIONAL_HASH
    issued_at: str = ""
    version: int = CERTIFICATE_VERSION
    signature: Signature | None = None


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _payload(cert: PolicyCertificate | dict[str, Any]) -> dict[str, Any]:
    fields = msgspec.to_builtins(cert) if isinstance(cert, PolicyCertificate) else dict(cert)
    fields.pop("signature", None)
    return fields


def sign(cert: PolicyCertificate, keys: RecordKeys) -> PolicyCertificate:
    """The certificate with the record key's signature over everything else in it."""
    unsigned = msgspec.structs.replace(cert, signature=None)
    return msgspec.structs.replace(unsigned, signature=Signature(kid=keys.kid, sig=keys.sign(DOMAIN, _payload(unsigned))))


def verify(cert: PolicyCertificate | dict[str, Any], keys: RecordKeys) -> str:
    """"" when the certificate's signature verifies with a trusted key, else what is wrong
    (`unsigned`, `unknown key`, `forged`). A dict is checked as it was decoded from JSON
    (a manifest, an API response), so members a newer writer added are covered too."""
    fields = msgspec.to_builtins(cert) if isinstance(cert, PolicyCertificate) else cert
    signature = fields.get("signature")
    if not isinstance(signature, dict) or not isinstance(signature.get("kid"), str) \
            or not isinstance(signature.get("sig"), str):
        return UNSIGNED
    return keys.check(DOMAIN, _payload(fields), signature["kid"], signature["sig"])
