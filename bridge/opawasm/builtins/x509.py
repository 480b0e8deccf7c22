"""crypto.x509.* certificate builtins (topdown crypto.go): parse certificates, CSRs and key pairs,
and verify a chain as Go's `Certificate.Verify` does for the options topdown passes."""

from __future__ import annotations

import base64
import ipaddress
import re
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_private_key,
    load_pem_private_key,
)

from bridge.opawasm.builtins.operands import need_obj, need_str
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.builtins.x509_json import b64, certificate_json, certificate_request_json, private_key_json
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat.encoding import b64decode, pem_decode
from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.values import RegoSet


def _pem_or_b64_certs(s: str) -> list[Any]:
    """topdown's getX509CertsFromString: PEM, or base64 of PEM, or base64 of DER certificates
    (one or several, concatenated, as Go's x509.ParseCertificates reads them)."""
    data = s.encode()
    if not data.startswith(b"-----BEGIN"):
        try:
            data = b64decode(data)
        except GoError as exc:
            raise BuiltinError(str(exc)) from None
        if not data.startswith(b"-----BEGIN"):
            return _der_certificates(data)
    der = bytearray()
    while data:
        block, data = pem_decode(data)
        if block is None:
            break
        if block.type != "CERTIFICATE":
            raise BuiltinError(f"PEM block type is '{block.type}', expected CERTIFICATE")
        der += block.data
    return _der_certificates(bytes(der))


def _der_certificates(der: bytes) -> list[Any]:
    """Certificates concatenated in DER: each one is an ASN.1 SEQUENCE, its length in its header."""
    certs = []
    while der:
        end = _der_length(der)
        try:
            certs.append(x509.load_der_x509_certificate(der[:end]))
        except ValueError:
            raise BuiltinError("x509: malformed certificate") from None
        der = der[end:]
    return certs


def _der_length(der: bytes) -> int:
    """The size of the DER element at the start of `der` (header included)."""
    if len(der) < 2 or der[0] != 0x30:
        raise BuiltinError("x509: malformed certificate")
    n = der[1]
    if n < 0x80:
        return 2 + n
    width = n & 0x7F
    if width == 0 or width > 4 or len(der) < 2 + width:
        raise BuiltinError("x509: malformed certificate")
    end = 2 + width + int.from_bytes(der[2 : 2 + width], "big")
    if end > len(der):
        raise BuiltinError("x509: malformed certificate")
    return end


@builtin("crypto.x509.parse_certificates")
def parse_certificates(ctx: EvalContext, s: Any) -> list[dict[str, Any]]:
    """Subset of Go's x509.Certificate JSON: names, validity, serial, SANs, CA flag, Raw."""
    return [certificate_json(c) for c in _pem_or_b64_certs(need_str(s, 1))]


_KEY_USAGES = {
    "KeyUsageAny": "2.5.29.37.0", "KeyUsageServerAuth": "1.3.6.1.5.5.7.3.1", "KeyUsageClientAuth": "1.3.6.1.5.5.7.3.2",
    "KeyUsageCodeSigning": "1.3.6.1.5.5.7.3.3", "KeyUsageEmailProtection": "1.3.6.1.5.5.7.3.4",
    "KeyUsageIPSECEndSystem": "1.3.6.1.5.5.7.3.5", "KeyUsageIPSECTunnel": "1.3.6.1.5.5.7.3.6",
    "KeyUsageIPSECUser": "1.3.6.1.5.5.7.3.7", "KeyUsageTimeStamping": "1.3.6.1.5.5.7.3.8",
    "KeyUsageOCSPSigning": "1.3.6.1.5.5.7.3.9",
}


def _host_matches(cert: Any, name: str) -> bool:
    """Go's Certificate.VerifyHostname for DNS names and IPs (SANs only; one-label wildcards)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
        return ip in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    host = name.lower().rstrip(".")
    for pattern in san.get_values_for_type(x509.DNSName):
        pat = pattern.lower().rstrip(".")
        if pat == host:
            return True
        if pat.startswith("*.") and "." in host and host.split(".", 1)[1] == pat[2:]:
            return True
    return False


def _verify_chain(certs: list[Any], now: Any, usages: set[str], dns: str | None) -> bool:
    if len(certs) < 2:
        return False
    try:
        for child, parent in zip(certs[1:], certs[:-1], strict=True):
            child.verify_directly_issued_by(parent)
    except Exception:  # noqa: BLE001 - any verification failure is "not valid", as in topdown
        return False
    for c in certs:
        if not (c.not_valid_before_utc <= now <= c.not_valid_after_utc):
            return False
    leaf = certs[-1]
    if usages and "2.5.29.37.0" not in usages:
        try:
            eku = {o.dotted_string for o in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value}
            if "2.5.29.37.0" not in eku and not eku & usages:
                return False
        except x509.ExtensionNotFound:
            pass
    if dns and not _host_matches(leaf, dns):
        return False
    return True


@builtin("crypto.x509.parse_and_verify_certificates")
def parse_and_verify(ctx: EvalContext, s: Any) -> list[Any]:
    """topdown: first certificate is the root, the last the leaf, the rest intermediates; the
    leaf must be valid now and usable for server auth (Go's default VerifyOptions); the result is
    the chain leaf first."""
    try:
        certs = _pem_or_b64_certs(need_str(s, 1))
    except BuiltinError:
        return [False, []]
    now = datetime.fromtimestamp(ctx.now_ns / 1e9, tz=UTC)
    if not _verify_chain(certs, now, {_KEY_USAGES["KeyUsageServerAuth"]}, None):
        return [False, []]
    return [True, [certificate_json(c) for c in reversed(certs)]]


@builtin("crypto.x509.parse_and_verify_certificates_with_options")
def parse_and_verify_with_options(ctx: EvalContext, s: Any, options: Any) -> list[Any]:
    s = need_str(s, 1)
    options = need_obj(options, 2)
    try:
        certs = _pem_or_b64_certs(s)
    except BuiltinError:
        return [False, []]
    now_ns, dns, usages = ctx.now_ns, None, {_KEY_USAGES["KeyUsageServerAuth"]}
    for k, v in options.items():
        if k == "DNSName":
            if not isinstance(v, str):
                raise BuiltinError("'DNSName' should be a string")
            dns = v.strip('"')
        elif k == "CurrentTime":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BuiltinError("'CurrentTime' should be a number")
            if isinstance(v, float) and not v.is_integer():
                raise BuiltinError("'CurrentTime' should be a valid int64 number")
            now_ns = int(v)
        elif k == "MaxConstraintComparisons":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise BuiltinError("'MaxConstraintComparisons' should be a number")
        elif k == "KeyUsages":
            if not isinstance(v, (list, RegoSet)):
                raise BuiltinError("'KeyUsages' should be an Array or Set")
            names = [x.strip('"') for x in v if isinstance(x, str)]
            invalid = [n for n in names if n not in _KEY_USAGES]
            if invalid:
                raise BuiltinError(f"invalid entries for 'KeyUsages' found: {invalid}")
            usages = {_KEY_USAGES[n] for n in names}
    now = datetime.fromtimestamp(now_ns / 1e9, tz=UTC)
    if not _verify_chain(certs, now, usages, dns):
        return [False, []]
    out = [certificate_json(c) for c in reversed(certs)]
    for c in out:
        c.pop("URIStrings", None)  # topdown returns x509.Certificate here without its extension fields
    return [True, out]


@builtin("crypto.x509.parse_certificate_request")
def parse_certificate_request(ctx: EvalContext, s: Any) -> dict[str, Any]:
    """Go's x509.CertificateRequest through encoding/json (PEM, or base64 of PEM or DER)."""
    text = need_str(s, 1)
    data = text.encode()
    if not text.startswith("-----BEGIN CERTIFICATE REQUEST-----"):
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:
            raise BuiltinError("illegal base64 data") from None
    m = re.search(rb"-----BEGIN ([^-]+)-----(.*?)-----END \1-----", data, re.S)
    if m is not None:
        if m.group(1) != b"CERTIFICATE REQUEST":
            raise BuiltinError("invalid PEM-encoded certificate signing request")
        data = base64.b64decode(b"".join(m.group(2).split()))
    try:
        csr = x509.load_der_x509_csr(data)
    except ValueError:
        # Go's encoding/asn1 names the class of the fault; pyca's parser does not say it in Go's words
        raise BuiltinError("asn1: structure error: malformed certificate request") from None
    return certificate_request_json(csr, data)


@builtin("crypto.x509.parse_keypair")
def parse_keypair(ctx: EvalContext, cert: Any, key: Any) -> dict[str, Any]:
    """Go's tls.X509KeyPair as topdown returns it: DER chain, private key, parsed leaf."""
    def pem_or_b64(v: Any, pos: int) -> bytes:
        text = need_str(v, pos)
        if text.startswith("-----BEGIN"):
            return text.encode()
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            raise BuiltinError("illegal base64 data") from None

    # topdown reports a bad key as operand 1 too
    cert_data, key_data = pem_or_b64(cert, 1), pem_or_b64(key, 1)
    try:
        if cert_data.startswith(b"-----BEGIN"):
            certs = x509.load_pem_x509_certificates(cert_data)
        else:
            certs = [x509.load_der_x509_certificate(cert_data)]
        if key_data.startswith(b"-----BEGIN"):
            pkey = load_pem_private_key(key_data, None)
        else:
            pkey = load_der_private_key(key_data, None)
    except (ValueError, TypeError) as exc:
        raise BuiltinError(f"tls: {exc}") from None
    leaf = certs[0]
    pub = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if pkey.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != pub:
        raise BuiltinError("tls: private key does not match public key")
    leaf_obj = certificate_json(leaf)
    leaf_obj.pop("URIStrings", None)
    return {
        "Certificate": [b64(c.public_bytes(Encoding.DER)) for c in certs],
        "PrivateKey": private_key_json(pkey),
        "SupportedSignatureAlgorithms": None,
        "OCSPStaple": None,
        "SignedCertificateTimestamps": None,
        "Leaf": leaf_obj,
    }
