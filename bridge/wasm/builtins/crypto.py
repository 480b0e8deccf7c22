"""crypto.* builtins (topdown crypto.go): digests, HMACs, x509/keys parsed where feasible."""

from __future__ import annotations

import base64
import hashlib
import hmac as _hmac
from typing import Any

from bridge.wasm.builtins import EvalContext, builtin
from bridge.wasm.builtins.strings import need_str
from bridge.wasm.errors import BuiltinError


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


def _pem_or_b64_certs(s: str) -> list[Any]:
    from cryptography import x509

    data = s.encode()
    if b"-----BEGIN" not in data:
        try:
            data = base64.b64decode(s, validate=True)
        except ValueError:
            raise BuiltinError("x509: malformed certificate input") from None
        if b"-----BEGIN" not in data:
            try:
                return [x509.load_der_x509_certificate(data)]
            except ValueError as exc:
                raise BuiltinError(f"x509: {exc}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BuiltinError(f"x509: {exc}") from None


def _name(n: Any) -> dict[str, Any]:
    from cryptography.x509.oid import NameOID

    def get(oid: Any) -> list[str] | None:
        v = [a.value for a in n.get_attributes_for_oid(oid)]
        return v or None

    out: dict[str, Any] = {}
    cn = get(NameOID.COMMON_NAME)
    out["CommonName"] = cn[0] if cn else ""
    for key, oid in (("Country", NameOID.COUNTRY_NAME), ("Organization", NameOID.ORGANIZATION_NAME),
                     ("OrganizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME), ("Locality", NameOID.LOCALITY_NAME),
                     ("Province", NameOID.STATE_OR_PROVINCE_NAME)):
        v = get(oid)
        if v:
            out[key] = v
    out["SerialNumber"] = ""
    return out


def _cert_obj(c: Any) -> dict[str, Any]:
    from cryptography import x509

    out: dict[str, Any] = {
        "Version": c.version.value + 1,
        "SerialNumber": c.serial_number,
        "Issuer": _name(c.issuer),
        "Subject": _name(c.subject),
        "NotBefore": c.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "NotAfter": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Raw": base64.b64encode(c.public_bytes(_der())).decode(),
    }
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            out["DNSNames"] = dns
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
        if ips:
            out["IPAddresses"] = ips
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            out["URIStrings"] = uris
    except x509.ExtensionNotFound:
        pass
    try:
        bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        out["IsCA"] = bc.ca
        out["BasicConstraintsValid"] = True
    except x509.ExtensionNotFound:
        out["IsCA"] = False
    return out


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


@builtin("crypto.x509.parse_certificates")
def parse_certificates(ctx: EvalContext, s: Any) -> list[dict[str, Any]]:
    """Subset of Go's x509.Certificate JSON: names, validity, serial, SANs, CA flag, Raw."""
    return [_cert_obj(c) for c in _pem_or_b64_certs(need_str(s, 1))]


@builtin("crypto.x509.parse_and_verify_certificates")
def parse_and_verify(ctx: EvalContext, s: Any) -> list[Any]:
    certs = _pem_or_b64_certs(need_str(s, 1))
    if len(certs) < 2:
        return [False, []]
    try:
        for child, parent in zip(certs[1:], certs[:-1]):
            child.verify_directly_issued_by(parent)  # leaf last in OPA's chain order: root first
    except Exception:  # noqa: BLE001 - any verification failure is "not valid"
        return [False, []]
    return [True, [_cert_obj(c) for c in reversed(certs)]]


@builtin("crypto.x509.parse_rsa_private_key")
def parse_rsa_private_key(ctx: EvalContext, s: Any) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem = need_str(s, 1).encode()
    if b"-----BEGIN" not in pem:
        pem = base64.b64decode(pem)
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
