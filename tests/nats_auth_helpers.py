"""Helpers for the NATS authentication tests: a real nats-server that admits only the generated
identities, clients connected as a role that record what nats-py reports, a private CA for TLS, and
decentralized-JWT credentials (operator -> account -> user) minted with the `nkeys` package."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import time
from pathlib import Path

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.aio.client import Client

from bridge.inference.connect import connect
from bridge.kernel.config import NatsSettings, Settings
from controlplane.infra.natsauth import NatsAuth, Permissions
from controlplane.infra.processes import ManagedProcess, start_nats
from controlplane.infra.recordkeys import RecordKeys
from controlplane.services import jetstream_steps

RECORD_KEYS = RecordKeys.generate()  # the control plane's record key (controlplane.infra.recordkeys)


class Reports:
    """An error callback that keeps what nats-py reports (it lowercases the server's text)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, exc: Exception) -> None:
        self.seen.append(str(exc).lower())

    def violations(self, subject: str = "") -> list[str]:
        return [e for e in self.seen if "permissions violation" in e and subject.lower() in e]

    async def wait_for(self, subject: str, timeout: float = 2.0) -> str:
        deadline = time.monotonic() + timeout
        while not (found := self.violations(subject)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no permissions violation for {subject!r}; saw {self.seen}")
            await asyncio.sleep(0.01)
        return found[-1]


# the product's own get-or-create code, as the supervisor runs it before any other role connects
PRODUCT_STEPS = tuple(jetstream_steps(Settings()))


def start_auth_nats(root: Path) -> tuple[ManagedProcess, NatsAuth]:
    auth = NatsAuth(root / "nats" / "auth").ensure()
    return start_nats(root / "nats", extra_args=auth.server_args()), auth


async def as_role(url: str, auth: NatsAuth, role: str, **kw) -> tuple[Client, Reports]:
    reports = Reports()
    nc = await connect(url, role=role, settings=auth.credential(role), error_cb=reports, **kw)
    return nc, reports


# -- TLS ----------------------------------------------------------------------------------------

def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def issue(directory: Path, name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path], *,
          dns: str, server: bool) -> tuple[Path, Path]:
    """A leaf certificate for `dns` signed by `ca`: (cert file, key file)."""
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    os.chmod(key_path, 0o600)
    return cert_path, key_path


# -- decentralized JWT ----------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Key:
    """An nkey pair of one kind (operator, account or user)."""

    def __init__(self, prefix: int) -> None:
        self.seed = nkeys.encode_seed(os.urandom(32), prefix).decode()
        self.pair = nkeys.from_seed(bytearray(self.seed.encode()))
        self.public = self.pair.public_key.decode()

    def jwt(self, subject: str, name: str, claims: dict) -> str:
        """A JWT about `subject`, issued and signed by this key (alg ed25519-nkey)."""
        body = {"jti": secrets.token_hex(16).upper(), "iat": int(time.time()), "iss": self.public, "sub": subject,
                "name": name, "nats": {**claims, "version": 2}}
        signing_input = f"{_b64(json.dumps({'typ': 'JWT', 'alg': 'ed25519-nkey'}).encode())}." \
                        f"{_b64(json.dumps(body).encode())}"
        return f"{signing_input}.{_b64(self.pair.sign(signing_input.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
              "leaf": -1}


class Operator:
    """An operator, its system account and one JetStream account; `user()` writes a .creds file."""

    def __init__(self) -> None:
        self.op = Key(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = Key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = Key(nkeys.PREFIX_BYTE_ACCOUNT)

    def server_config(self) -> str:
        op_jwt = self.op.jwt(self.op.public, "groqpolicy-test", {"type": "operator", "system_account": self.system.public})
        sys_jwt = self.op.jwt(self.system.public, "SYS", {"type": "account", "limits": _UNLIMITED})
        # an account without JetStream limits has no JetStream
        acc_jwt = self.op.jwt(self.account.public, "GROQPOLICY", {"type": "account", "limits": {
            **_UNLIMITED, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}})
        return (f"operator: {op_jwt}\nsystem_account: {self.system.public}\nresolver: MEMORY\n"
                f"resolver_preload: {{\n  {self.system.public}: {sys_jwt}\n  {self.account.public}: {acc_jwt}\n}}\n")

    def user(self, path: Path, name: str, perms: Permissions, signer: Key | None = None) -> Path:
        user = Key(nkeys.PREFIX_BYTE_USER)
        claims: dict = {"type": "user", "subs": -1, "data": -1, "payload": -1,
                        "pub": {"allow": [g.subject for g in perms.publish]},
                        "sub": {"allow": [g.subject for g in perms.subscribe]}}
        if perms.responder:
            claims["resp"] = {"max": 1, "ttl": 150 * 10**9}
        token = (signer or self.account).jwt(user.public, name, claims)
        text = (f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
                f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n")
        path.write_text(text)
        os.chmod(path, 0o600)
        return path


def creds_settings(path: Path) -> NatsSettings:
    return NatsSettings(creds_file=path, connect_timeout_s=5)
