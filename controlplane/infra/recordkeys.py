"""The control plane's record-signing key: Ed25519 (pyca/cryptography) over audit records, audit
checkpoints, policy records and the dashboard's shared sign-in codes, and the set of public keys
whose signatures are trusted.

Why here: the audit trail and the policy store both sign and check with it, and `infra` sits below
both (it imports nothing else of the control plane), so neither has to import the other.

What is signed is always `<domain>\\n<canonical JSON>` (keys sorted, compact): the domain names the
kind of record, so a signature over one kind can never be replayed as another.

Keys and files:
- the active key signs: `GROQPOLICY_RECORD_KEY_FILE`, default `<state>/record-keys/signing.pem`
  (PKCS#8 PEM, 0600, its directory 0700), generated on first start when the file does not exist;
- its key id is derived from the public key (`rk-` + 16 hex digits of SHA-256 over the raw key), so a
  key id can never name two keys and rotation needs no naming;
- the trusted set: the active key, every public key in `<state>/record-keys/trusted/` (the active
  key's own is written there on first use, so it stays trusted after it is rotated out), and those in
  `GROQPOLICY_RECORD_TRUSTED_KEYS` (a directory, or one file, of PEM public keys: retired keys, other
  deployments' keys). Nothing is trusted because it arrived over NATS: anyone who can write to the
  stream or the bucket could offer their own key.

Replicas: the control planes of one deployment share ONE key (the same `GROQPOLICY_RECORD_KEY_FILE`,
from a secret store or a shared volume). They are one trust domain already: each may write any
policy that all the others compile and serve, and each appends to the same audit chain, so per-replica
keys would buy attribution but no isolation, at the price of collecting and distributing every
replica's public key before a new replica may write. Per-replica keys still work (each replica's
public key in every other's trusted set), since verification goes by key id over the trusted set.

Rotation: point `GROQPOLICY_RECORD_KEY_FILE` at a new file (or move the default file away) and
restart; a new key is generated, new records are signed with it, and the old key's public half stays
in `trusted/`, so old records still verify. Deleting a public key from the trusted set distrusts what
it signed (verify then reports `unknown key`).

The private key is never logged, printed or put in a repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bridge.kernel.config import Settings
from bridge.kernel.errors import ConfigError

log = logging.getLogger(__name__)

# What a signature check can find wrong (the words `audit verify` and the policy store report).
FORGED = "forged"  # a trusted key id, but the signature does not verify over what is stored
UNKNOWN_KEY = "unknown key"  # signed by a key that is not in the trusted set
UNSIGNED = "unsigned"  # no signature at all

KEY_DIR = "record-keys"
SIGNING_FILE = "signing.pem"
TRUSTED_DIR = "trusted"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "rk-" + hashlib.sha256(raw).hexdigest()[:16]


def message(domain: str, payload: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the domain, a newline, the payload's canonical JSON."""
    return domain.encode() + b"\n" + msgspec.json.encode(payload, order="sorted")


class RecordKeys:
    """The active signing key and the trusted public keys, by key id."""

    def __init__(self, private: Ed25519PrivateKey, trusted: Iterable[Ed25519PublicKey] = ()) -> None:
        self._private = private
        self.kid = key_id(private.public_key())
        self.trusted: dict[str, Ed25519PublicKey] = {key_id(k): k for k in trusted}
        self.trusted[self.kid] = private.public_key()

    @classmethod
    def generate(cls, trusted: Iterable[Ed25519PublicKey] = ()) -> RecordKeys:
        """A fresh key held in memory only (tests, benchmarks)."""
        return cls(Ed25519PrivateKey.generate(), trusted)

    def rotated(self) -> RecordKeys:
        """A new active key that still trusts every key this one trusts (the in-memory rotation)."""
        return RecordKeys(Ed25519PrivateKey.generate(), self.trusted.values())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._private.public_key()

    def sign(self, domain: str, payload: Mapping[str, Any]) -> str:
        """The signature (base64url, unpadded) of the active key over `domain` + `payload`."""
        return base64.urlsafe_b64encode(self._private.sign(message(domain, payload))).rstrip(b"=").decode()

    def check(self, domain: str, payload: Mapping[str, Any], kid: str, signature: str) -> str:
        """"" when `signature` by `kid` verifies over `domain` + `payload`, else UNKNOWN_KEY or FORGED."""
        public = self.trusted.get(kid)
        if public is None:
            return UNKNOWN_KEY
        try:
            raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            public.verify(raw, message(domain, payload))
        except (InvalidSignature, binascii.Error, ValueError, TypeError):
            return FORGED
        return ""

    def __repr__(self) -> str:  # never the private key
        return f"RecordKeys(kid={self.kid!r}, trusted={sorted(self.trusted)!r})"


# -- files ---------------------------------------------------------------------------------------

def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes) -> bool:
    """Write `path` (0600) unless it exists; whether this call created it. Written aside and linked
    into place, so a concurrent reader never sees half a key and two starters never overwrite."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
    except OSError as exc:
        raise ConfigError(f"record keys: cannot create {path}: {exc.strerror or exc}") from None


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"record key {path}: cannot read it: {exc.strerror or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("record key %s: readable by others (mode %o); it should be 0600", path, stat.S_IMODE(mode))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"record key {path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"record key {path}: an Ed25519 key is required, got {type(key).__name__}")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"trusted record key {path}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"trusted record key {path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"trusted record key {path}: an Ed25519 key is required, got {type(key).__name__}")
    return key


def _public_keys(where: Path) -> list[Ed25519PublicKey]:
    if where.is_file():
        return [load_public(where)]
    if not where.is_dir():
        return []
    return [load_public(p) for p in sorted(where.iterdir()) if p.suffix in (".pem", ".pub") and p.is_file()]


def ensure_record_keys(settings: Settings) -> RecordKeys:
    """The record keys of this control plane: the active key (generated on first start) and the trusted set."""
    own = settings.state_dir / KEY_DIR
    _private_dir(own)
    path = settings.record_key_file or own / SIGNING_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if _write_new(path, _private_pem(Ed25519PrivateKey.generate())):
            log.warning("record keys: generated a new Ed25519 key in %s", path)
    private = load_private(path)
    trusted_dir = own / TRUSTED_DIR
    _private_dir(trusted_dir)
    kid = key_id(private.public_key())
    # remembered, so the key stays trusted for what it signed once it is rotated out
    _write_new(trusted_dir / f"{kid}.pem", _public_pem(private.public_key()))
    trusted = _public_keys(trusted_dir)
    if settings.record_trusted_keys is not None:
        if not settings.record_trusted_keys.exists():
            raise ConfigError(f"GROQPOLICY_RECORD_TRUSTED_KEYS={str(settings.record_trusted_keys)!r}: no such file or directory")
        trusted += _public_keys(settings.record_trusted_keys)
    keys = RecordKeys(private, trusted)
    log.info("record keys: signing with %s; trusted: %s", keys.kid, ", ".join(sorted(keys.trusted)))
    return keys


def export_public(keys: RecordKeys, directory: Path) -> Path:
    """Write the active key's public half into `directory` as `<kid>.pem` (for another replica's
    trusted set); the path written."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{keys.kid}.pem"
    _write_new(path, _public_pem(keys.public_key))
    return path
