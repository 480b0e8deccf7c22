"""Bundle signing and verification keys: PEM in, pyca/cryptography objects for PyJWT out.

The PEM kinds accepted are the ones OPA accepts (v1/bundle/keys.go, verify.go): PKCS#1 `RSA PRIVATE
KEY`, SEC1 `EC PRIVATE KEY` and PKCS#8 `PRIVATE KEY` for signing; `PUBLIC KEY`, `RSA PUBLIC KEY` and
`CERTIFICATE` for verification. Only asymmetric JWS algorithms are offered: an HMAC secret would
have to be shared with every agent, which defeats the point of signed bundles.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bridge.kernel.config import SigningSettings
from bridge.kernel.errors import GroqPolicyError

DEFAULT_KID = "groqpolicy"
DEFAULT_ALG = "RS256"
ENV_KEY = "GROQPOLICY_SIGNING_KEY"
ENV_KEY_FILE = "GROQPOLICY_SIGNING_KEY_FILE"
ENV_KID = "GROQPOLICY_SIGNING_KID"
ENV_VERIFICATION_KEY = "GROQPOLICY_VERIFICATION_KEY"
ENV_VERIFICATION_KEY_FILE = "GROQPOLICY_VERIFICATION_KEY_FILE"

# JWS algorithm -> key family ("RSA") or EC curve name. Every one of these is in OPA's keys.go list.
ALGORITHMS: dict[str, str] = {
    "RS256": "RSA", "RS384": "RSA", "RS512": "RSA",
    "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
    "ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1",
}  # fmt: skip
_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1,
}
_ALG_FOR_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
RSA_BITS = 2048

# A kid lands verbatim in the JWS header, agent configs and file names: keep it boring. (OPA's
# signer also drops off its fast path for kids that would need JSON escaping.)
_KID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+:-]{0,127}")


class SigningKeyError(GroqPolicyError):
    """A key cannot be generated, loaded or used (bad PEM, wrong type, unknown algorithm, no key configured)."""

    status = 500


def check_kid(kid: str) -> str:
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise SigningKeyError(
            f"key id {kid!r}: invalid (want 1-128 characters of [A-Za-z0-9._@+:-], starting alphanumeric)"
        )
    return kid


def _family(key: Any) -> str:
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "RSA"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return key.curve.name
    return type(key).__name__


def _resolve_alg(key: Any, alg: str | None, where: str) -> str:
    """`alg` checked against the key, or inferred from it (RSA -> RS256, P-256 -> ES256, ...)."""
    family = _family(key)
    if alg is None:
        if family == "RSA":
            return DEFAULT_ALG
        if family in _ALG_FOR_CURVE:
            return _ALG_FOR_CURVE[family]
        raise SigningKeyError(f"{where}: unsupported key type {family} (want an RSA or P-256/P-384/P-521 EC key)")
    if alg not in ALGORITHMS:
        raise SigningKeyError(f"{where}: unsupported algorithm {alg!r} (want one of {', '.join(ALGORITHMS)})")
    if ALGORITHMS[alg] != family:
        raise SigningKeyError(f"{where}: algorithm mismatch ({alg} wants key type {ALGORITHMS[alg]}, got: {family})")
    return alg


def _pem_text(pem: str | bytes) -> str:
    return pem.decode("ascii", errors="replace") if isinstance(pem, bytes) else pem


def _load_private(pem: str, where: str) -> Any:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError as exc:  # encrypted key: we never prompt for a passphrase
        raise SigningKeyError(f"{where}: encrypted private keys are not supported ({exc})") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{where}: not a PEM private key ({exc})") from exc


def _load_public(pem: str, where: str) -> Any:
    """A public key from PUBLIC KEY / RSA PUBLIC KEY / CERTIFICATE / any private-key PEM."""
    data = pem.encode()
    if "PRIVATE KEY-----" in pem:
        return _load_private(pem, where).public_key()
    if "-----BEGIN CERTIFICATE-----" in pem:
        try:
            return x509.load_pem_x509_certificate(data).public_key()
        except ValueError as exc:
            raise SigningKeyError(f"{where}: not a PEM certificate ({exc})") from exc
    try:
        return serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{where}: not a PEM public key ({exc})") from exc


def _spki_pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@dataclass(frozen=True)
class VerificationKey:
    """A public key as agents are configured with it (`keys.<kid>` in OPA's config)."""

    kid: str
    alg: str
    public_pem: str
    public_key: Any = field(init=False, repr=False, compare=False)  # parsed once, for PyJWT

    def __post_init__(self) -> None:
        check_kid(self.kid)
        where = f"verification key {self.kid!r}"
        if "PRIVATE KEY-----" in self.public_pem:  # it would end up in agent configs
            raise SigningKeyError(f"{where}: got a private key (want its public half: SigningKey.verification_key())")
        key = _load_public(self.public_pem, where)
        object.__setattr__(self, "alg", _resolve_alg(key, self.alg, where))
        object.__setattr__(self, "public_key", key)

    def to_opa_config(self) -> dict[str, str]:
        """The value for `keys.<kid>` in an OPA agent config."""
        return {"key": self.public_pem, "algorithm": self.alg}


@dataclass(frozen=True)
class SigningKey:
    """A private key that signs bundles; `repr` never shows the PEM."""

    kid: str
    alg: str
    private_pem: str = field(repr=False)
    private_key: Any = field(init=False, repr=False, compare=False)  # parsed once, for PyJWT

    def __post_init__(self) -> None:
        check_kid(self.kid)
        where = f"signing key {self.kid!r}"
        key = _load_private(self.private_pem, where)
        object.__setattr__(self, "alg", _resolve_alg(key, self.alg, where))
        object.__setattr__(self, "private_key", key)

    def verification_key(self) -> VerificationKey:
        return VerificationKey(kid=self.kid, alg=self.alg, public_pem=_spki_pem(self.private_key.public_key()))


def generate_keypair(alg: str = DEFAULT_ALG, kid: str = DEFAULT_KID) -> SigningKey:
    """A fresh key for `alg` (RSA 2048 for RS*/PS*, the matching NIST curve for ES*), PKCS#8 PEM."""
    check_kid(kid)
    family = ALGORITHMS.get(alg)
    if family is None:
        raise SigningKeyError(f"unsupported algorithm {alg!r} (want one of {', '.join(ALGORITHMS)})")
    key: Any
    if family == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    else:
        key = ec.generate_private_key(_CURVES[family]())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return SigningKey(kid=kid, alg=alg, private_pem=pem)


def write_keypair(key: SigningKey, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write `<kid>.pem` (mode 0600) and `<kid>.pub.pem` into out_dir; never overwrites a key."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{key.kid}.pem", out / f"{key.kid}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(
                f"{path}: already exists (refusing to overwrite a key; remove it or pick another --kid)"
            )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # the umask cannot widen it, but be explicit
        fh.write(key.private_pem)
    public_path.write_text(key.verification_key().public_pem)
    return private_path, public_path


def _read(path: str | os.PathLike[str], what: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read {what}: {exc.strerror or exc}") from exc


def _kid(kid: str | None) -> str:
    return kid or SigningSettings.from_env().kid or DEFAULT_KID


def load_signing_key(
    path: str | os.PathLike[str] | None = None, *, kid: str | None = None, alg: str | None = None
) -> SigningKey:
    """The signing key from `path`, else $GROQPOLICY_SIGNING_KEY (PEM text), else $GROQPOLICY_SIGNING_KEY_FILE.

    kid: argument, else $GROQPOLICY_SIGNING_KID, else "groqpolicy". alg: argument, else inferred
    from the key type (RSA -> RS256, EC P-256 -> ES256, P-384 -> ES384, P-521 -> ES512).
    """
    if path is not None:
        pem = _read(path, "signing key")
    elif text := SigningSettings.from_env().key_pem:
        pem = text
    elif file := SigningSettings.from_env().key_file:
        pem = _read(file, f"signing key (${ENV_KEY_FILE})")
    else:
        raise SigningKeyError(
            f"no signing key configured: set ${ENV_KEY} (PEM text) or ${ENV_KEY_FILE} (path); "
            f"create one with `groqpolicy keys generate --out-dir DIR`"
        )
    pem = _pem_text(pem)
    where = str(path) if path is not None else "signing key"
    return SigningKey(kid=_kid(kid), alg=_resolve_alg(_load_private(pem, where), alg, where), private_pem=pem)


def load_verification_key(
    path: str | os.PathLike[str] | None = None, *, kid: str | None = None, alg: str | None = None
) -> VerificationKey:
    """The public key from `path`, else $GROQPOLICY_VERIFICATION_KEY / _FILE, else derived from the signing key.

    Any PEM OPA accepts works (PUBLIC KEY, RSA PUBLIC KEY, CERTIFICATE) and so does a private key,
    whose public half is used. The stored PEM is always normalised to SubjectPublicKeyInfo.
    """
    if path is not None:
        pem, where = _read(path, "verification key"), str(path)
    elif text := SigningSettings.from_env().verification_key_pem:
        pem, where = text, f"${ENV_VERIFICATION_KEY}"
    elif file := SigningSettings.from_env().verification_key_file:
        pem, where = _read(file, f"verification key (${ENV_VERIFICATION_KEY_FILE})"), str(file)
    else:
        return load_signing_key(kid=kid, alg=alg).verification_key()
    public = _load_public(_pem_text(pem), where)
    return VerificationKey(kid=_kid(kid), alg=_resolve_alg(public, alg, where), public_pem=_spki_pem(public))
