"""Signing keys: generation, files on disk, environment configuration, algorithm inference."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from bridge.opabundle.keys import (
    SigningKey,
    SigningKeyError,
    VerificationKey,
    generate_keypair,
    load_signing_key,
    load_verification_key,
    write_keypair,
)

ENV_VARS = (
    "GROQPOLICY_SIGNING_KEY",
    "GROQPOLICY_SIGNING_KEY_FILE",
    "GROQPOLICY_SIGNING_KID",
    "GROQPOLICY_VERIFICATION_KEY",
    "GROQPOLICY_VERIFICATION_KEY_FILE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("alg", "kind"),
    [("RS256", rsa.RSAPrivateKey), ("PS256", rsa.RSAPrivateKey), ("ES256", ec.EllipticCurvePrivateKey),
     ("ES384", ec.EllipticCurvePrivateKey), ("ES512", ec.EllipticCurvePrivateKey)],
)  # fmt: skip
def test_generate_each_algorithm(alg: str, kind: type) -> None:
    key = generate_keypair(alg, kid="k1")
    assert (key.kid, key.alg) == ("k1", alg)
    assert isinstance(key.private_key, kind)
    assert key.private_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE" not in repr(key)
    pub = key.verification_key()
    assert (pub.kid, pub.alg) == ("k1", alg)
    assert pub.public_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert pub.to_opa_config() == {"key": pub.public_pem, "algorithm": alg}


def test_generate_defaults_and_rejections() -> None:
    key = generate_keypair()
    assert (key.kid, key.alg, key.private_key.key_size) == ("groqpolicy", "RS256", 2048)
    with pytest.raises(SigningKeyError, match=r"^unsupported algorithm 'HS256' \(want one of RS256, "):
        generate_keypair("HS256")
    with pytest.raises(SigningKeyError, match=r"^key id 'a b': invalid"):
        generate_keypair("ES256", kid="a b")
    with pytest.raises(SigningKeyError, match=r"^key id '../x': invalid"):
        generate_keypair("ES256", kid="../x")


def test_write_keypair_modes_and_no_overwrite(tmp_path: Path) -> None:
    key = generate_keypair("ES256", kid="prod-1")
    private, public = write_keypair(key, tmp_path / "new" / "dir")
    assert (private.name, public.name) == ("prod-1.pem", "prod-1.pub.pem")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text() == key.private_pem
    assert public.read_text() == key.verification_key().public_pem
    with pytest.raises(SigningKeyError, match=r"prod-1\.pem: already exists \(refusing to overwrite a key"):
        write_keypair(generate_keypair("ES256", kid="prod-1"), tmp_path / "new" / "dir")
    assert private.read_text() == key.private_pem


def test_load_signing_key_from_path_infers_alg(tmp_path: Path) -> None:
    for alg in ("RS256", "ES256", "ES384", "ES512"):
        private, _ = write_keypair(generate_keypair(alg, kid=f"k{alg}"), tmp_path)
        loaded = load_signing_key(private, kid="x")
        assert (loaded.kid, loaded.alg) == ("x", alg)
    rsa_path = tmp_path / "kRS256.pem"
    assert load_signing_key(rsa_path, alg="PS512").alg == "PS512"
    with pytest.raises(SigningKeyError, match=r"kRS256\.pem: algorithm mismatch \(ES256 wants key type secp256r1, got: RSA\)$"):
        load_signing_key(rsa_path, alg="ES256")
    with pytest.raises(SigningKeyError, match=r"kES256\.pem: algorithm mismatch \(ES384 wants key type secp384r1, got: secp256r1\)$"):
        load_signing_key(tmp_path / "kES256.pem", alg="ES384")


def test_load_signing_key_accepts_pkcs1_and_sec1(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption())  # fmt: skip
    assert pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    (tmp_path / "rsa.pem").write_bytes(pkcs1)
    assert load_signing_key(tmp_path / "rsa.pem").alg == "RS256"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    sec1 = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())  # fmt: skip
    assert sec1.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    (tmp_path / "ec.pem").write_bytes(sec1)
    assert load_signing_key(tmp_path / "ec.pem").alg == "ES256"


def test_load_signing_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SigningKeyError, match=r"^no signing key configured: set \$GROQPOLICY_SIGNING_KEY \(PEM text\) or "):
        load_signing_key()
    key = generate_keypair("ES256", kid="ignored")
    private, _ = write_keypair(key, tmp_path)
    monkeypatch.setenv("GROQPOLICY_SIGNING_KEY_FILE", str(private))
    assert load_signing_key() == SigningKey(kid="groqpolicy", alg="ES256", private_pem=key.private_pem)
    monkeypatch.setenv("GROQPOLICY_SIGNING_KID", "from-env")
    assert load_signing_key().kid == "from-env"
    assert load_signing_key(kid="explicit").kid == "explicit"
    other = generate_keypair("RS256")
    monkeypatch.setenv("GROQPOLICY_SIGNING_KEY", other.private_pem)  # PEM text wins over the file
    assert load_signing_key().private_pem == other.private_pem
    monkeypatch.setenv("GROQPOLICY_SIGNING_KEY", "not a pem")
    with pytest.raises(SigningKeyError, match=r"^signing key: not a PEM private key"):
        load_signing_key()
    monkeypatch.delenv("GROQPOLICY_SIGNING_KEY")
    monkeypatch.setenv("GROQPOLICY_SIGNING_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(SigningKeyError, match=r"missing\.pem: cannot read signing key"):
        load_signing_key()


def test_unsupported_and_encrypted_keys(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ed.pem").write_bytes(pem)
    with pytest.raises(SigningKeyError, match=r"ed\.pem: unsupported key type"):
        load_signing_key(tmp_path / "ed.pem")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enc = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(b"pw"))  # fmt: skip
    (tmp_path / "enc.pem").write_bytes(enc)
    with pytest.raises(SigningKeyError, match=r"encrypted private keys are not supported"):
        load_signing_key(tmp_path / "enc.pem")


def self_signed_cert(key: ec.EllipticCurvePrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "groqpolicy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert.public_bytes(serialization.Encoding.PEM)


def test_load_verification_key_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = generate_keypair("ES256", kid="k")
    private, public = write_keypair(key, tmp_path)
    want = key.verification_key().public_pem
    assert load_verification_key(public, kid="k") == VerificationKey("k", "ES256", want)
    assert load_verification_key(private, kid="k").public_pem == want  # public half of a private key
    (tmp_path / "cert.pem").write_bytes(self_signed_cert(key.private_key))
    assert load_verification_key(tmp_path / "cert.pem", kid="k").public_pem == want
    rsa_key = generate_keypair("RS256").private_key
    pkcs1_pub = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    (tmp_path / "rsa-pub.pem").write_bytes(pkcs1_pub)
    loaded = load_verification_key(tmp_path / "rsa-pub.pem")
    assert (loaded.kid, loaded.alg) == ("groqpolicy", "RS256")
    assert loaded.public_pem.startswith("-----BEGIN PUBLIC KEY-----")  # normalised to SPKI
    # environment: explicit verification key, else derived from the signing key
    monkeypatch.setenv("GROQPOLICY_SIGNING_KEY", key.private_pem)
    monkeypatch.setenv("GROQPOLICY_SIGNING_KID", "env-kid")
    assert load_verification_key() == VerificationKey("env-kid", "ES256", want)
    monkeypatch.setenv("GROQPOLICY_VERIFICATION_KEY_FILE", str(tmp_path / "rsa-pub.pem"))
    assert load_verification_key().alg == "RS256"
    monkeypatch.setenv("GROQPOLICY_VERIFICATION_KEY", want)
    assert load_verification_key(alg="ES256").public_pem == want
    with pytest.raises(SigningKeyError, match=r"^\$GROQPOLICY_VERIFICATION_KEY: algorithm mismatch \(RS256 wants key type RSA, got: secp256r1\)$"):
        load_verification_key(alg="RS256")


def test_a_verification_key_never_holds_a_private_key() -> None:
    key = generate_keypair("ES256", kid="k")
    with pytest.raises(SigningKeyError, match=r"^verification key 'k': got a private key"):
        VerificationKey("k", "ES256", key.private_pem)
