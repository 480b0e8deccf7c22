"""crypto.* builtins (topdown crypto.go): digests, HMACs, x509/keys parsed where feasible."""

from __future__ import annotations

import base64
import hashlib
import hmac as _hmac
import re
from datetime import UTC
from typing import Any

from bridge.opawasm.builtins import EvalContext, builtin
from bridge.opawasm.builtins.strings import need_str, type_name
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.values import RegoSet


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


_NAME_FIELDS = (
    ("Country", "2.5.4.6"), ("Organization", "2.5.4.10"), ("OrganizationalUnit", "2.5.4.11"),
    ("Locality", "2.5.4.7"), ("Province", "2.5.4.8"), ("StreetAddress", "2.5.4.9"), ("PostalCode", "2.5.4.17"),
)
_SIG_ALGS = {
    "1.2.840.113549.1.1.2": 1, "1.2.840.113549.1.1.4": 2, "1.2.840.113549.1.1.5": 3, "1.2.840.113549.1.1.11": 4,
    "1.2.840.113549.1.1.12": 5, "1.2.840.113549.1.1.13": 6, "1.2.840.10040.4.3": 7, "2.16.840.1.101.3.4.3.2": 8,
    "1.2.840.10045.4.1": 9, "1.2.840.10045.4.3.2": 10, "1.2.840.10045.4.3.3": 11, "1.2.840.10045.4.3.4": 12,
    "1.3.101.112": 16,
}
_EKU = {"2.5.29.37.0": 0, "1.3.6.1.5.5.7.3.1": 1, "1.3.6.1.5.5.7.3.2": 2, "1.3.6.1.5.5.7.3.3": 3,
        "1.3.6.1.5.5.7.3.4": 4, "1.3.6.1.5.5.7.3.5": 5, "1.3.6.1.5.5.7.3.6": 6, "1.3.6.1.5.5.7.3.7": 7,
        "1.3.6.1.5.5.7.3.8": 8, "1.3.6.1.5.5.7.3.9": 9}


def _oid(dotted: str) -> list[int]:
    return [int(x) for x in dotted.split(".")]


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _name(n: Any) -> dict[str, Any]:
    """Go's pkix.Name as encoding/json prints it."""
    attrs = [a for rdn in n.rdns for a in rdn]
    out: dict[str, Any] = {}
    for key, oid in _NAME_FIELDS:
        vals = [a.value for a in attrs if a.oid.dotted_string == oid]
        out[key] = vals or None
    sn = [a.value for a in attrs if a.oid.dotted_string == "2.5.4.5"]
    cn = [a.value for a in attrs if a.oid.dotted_string == "2.5.4.3"]
    out["SerialNumber"] = sn[-1] if sn else ""
    out["CommonName"] = cn[-1] if cn else ""
    out["Names"] = [{"Type": _oid(a.oid.dotted_string), "Value": a.value} for a in attrs] or None
    out["ExtraNames"] = None
    return out


def _public_key(c: Any) -> tuple[Any, int]:
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

    k = c.public_key()
    if isinstance(k, rsa.RSAPublicKey):
        n = k.public_numbers()
        return {"N": n.n, "E": n.e}, 1
    if isinstance(k, dsa.DSAPublicKey):
        return {"Y": k.public_numbers().y}, 2
    if isinstance(k, ec.EllipticCurvePublicKey):
        n = k.public_numbers()
        return {"Curve": {}, "X": n.x, "Y": n.y}, 3
    if isinstance(k, ed25519.Ed25519PublicKey):
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return _b64(k.public_bytes(Encoding.Raw, PublicFormat.Raw)), 4
    return None, 0


def _cert_obj(c: Any) -> dict[str, Any]:
    """Go's x509.Certificate through encoding/json (what topdown returns), for the fields a
    cryptography.x509 certificate exposes; rarely used policy/name-constraint fields stay null."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pk, pk_alg = _public_key(c)
    exts = c.extensions
    out: dict[str, Any] = {
        "Raw": _b64(c.public_bytes(Encoding.DER)),
        "RawTBSCertificate": _b64(c.tbs_certificate_bytes),
        "RawSubjectPublicKeyInfo": _b64(c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)),
        "RawSubject": _b64(c.subject.public_bytes()),
        "RawIssuer": _b64(c.issuer.public_bytes()),
        "Signature": _b64(c.signature),
        "SignatureAlgorithm": _SIG_ALGS.get(c.signature_algorithm_oid.dotted_string, 0),
        "PublicKeyAlgorithm": pk_alg,
        "PublicKey": pk,
        "Version": c.version.value + 1,
        "SerialNumber": c.serial_number,
        "Issuer": _name(c.issuer),
        "Subject": _name(c.subject),
        "NotBefore": c.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "NotAfter": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "KeyUsage": 0,
        "Extensions": [{"Id": _oid(e.oid.dotted_string), "Critical": e.critical, "Value": _b64(e.value.public_bytes())}
                       for e in exts] or None,
        "ExtraExtensions": None,
        "UnhandledCriticalExtensions": None,
        "ExtKeyUsage": None,
        "UnknownExtKeyUsage": None,
        "BasicConstraintsValid": False,
        "IsCA": False,
        "MaxPathLen": 0,
        "MaxPathLenZero": False,
        "SubjectKeyId": None,
        "AuthorityKeyId": None,
        "OCSPServer": None,
        "IssuingCertificateURL": None,
        "DNSNames": None,
        "EmailAddresses": None,
        "IPAddresses": None,
        "URIs": None,
        "PermittedDNSDomainsCritical": False,
        "PermittedDNSDomains": None,
        "ExcludedDNSDomains": None,
        "PermittedIPRanges": None,
        "ExcludedIPRanges": None,
        "PermittedEmailAddresses": None,
        "ExcludedEmailAddresses": None,
        "PermittedURIDomains": None,
        "ExcludedURIDomains": None,
        "CRLDistributionPoints": None,
        "PolicyIdentifiers": None,
        "Policies": None,
        "InhibitAnyPolicy": 0,
        "InhibitAnyPolicyZero": False,
        "InhibitPolicyMapping": 0,
        "InhibitPolicyMappingZero": False,
        "RequireExplicitPolicy": 0,
        "RequireExplicitPolicyZero": False,
        "PolicyMappings": None,
        "URIStrings": None,
    }
    for e in exts:
        v = e.value
        if isinstance(v, x509.SubjectAlternativeName):
            out["DNSNames"] = v.get_values_for_type(x509.DNSName) or None
            out["EmailAddresses"] = v.get_values_for_type(x509.RFC822Name) or None
            out["IPAddresses"] = [str(i) for i in v.get_values_for_type(x509.IPAddress)] or None
            uris = v.get_values_for_type(x509.UniformResourceIdentifier)
            out["URIStrings"] = uris or None
        elif isinstance(v, x509.BasicConstraints):
            out["BasicConstraintsValid"] = True
            out["IsCA"] = v.ca
            out["MaxPathLen"] = -1 if v.path_length is None else v.path_length
            out["MaxPathLenZero"] = v.path_length == 0
        elif isinstance(v, x509.KeyUsage):
            bits = [v.digital_signature, v.content_commitment, v.key_encipherment, v.data_encipherment, v.key_agreement,
                    v.key_cert_sign, v.crl_sign,
                    v.encipher_only if v.key_agreement else False, v.decipher_only if v.key_agreement else False]
            out["KeyUsage"] = sum(1 << i for i, b in enumerate(bits) if b)
        elif isinstance(v, x509.ExtendedKeyUsage):
            known = [_EKU[o.dotted_string] for o in v if o.dotted_string in _EKU]
            unknown = [_oid(o.dotted_string) for o in v if o.dotted_string not in _EKU]
            out["ExtKeyUsage"] = known or None
            out["UnknownExtKeyUsage"] = unknown or None
        elif isinstance(v, x509.SubjectKeyIdentifier):
            out["SubjectKeyId"] = _b64(v.digest)
        elif isinstance(v, x509.AuthorityKeyIdentifier):
            out["AuthorityKeyId"] = _b64(v.key_identifier)
        elif isinstance(v, x509.AuthorityInformationAccess):
            from cryptography.x509.oid import AuthorityInformationAccessOID as A

            out["OCSPServer"] = [d.access_location.value for d in v if d.access_method == A.OCSP] or None
            out["IssuingCertificateURL"] = [d.access_location.value for d in v if d.access_method == A.CA_ISSUERS] or None
        elif isinstance(v, x509.CRLDistributionPoints):
            out["CRLDistributionPoints"] = [n.value for dp in v for n in (dp.full_name or [])] or None
        elif isinstance(v, x509.CertificatePolicies):
            out["PolicyIdentifiers"] = [_oid(p.policy_identifier.dotted_string) for p in v] or None
    return out


@builtin("crypto.x509.parse_certificates")
def parse_certificates(ctx: EvalContext, s: Any) -> list[dict[str, Any]]:
    """Subset of Go's x509.Certificate JSON: names, validity, serial, SANs, CA flag, Raw."""
    return [_cert_obj(c) for c in _pem_or_b64_certs(need_str(s, 1))]


_KEY_USAGES = {
    "KeyUsageAny": "2.5.29.37.0", "KeyUsageServerAuth": "1.3.6.1.5.5.7.3.1", "KeyUsageClientAuth": "1.3.6.1.5.5.7.3.2",
    "KeyUsageCodeSigning": "1.3.6.1.5.5.7.3.3", "KeyUsageEmailProtection": "1.3.6.1.5.5.7.3.4",
    "KeyUsageIPSECEndSystem": "1.3.6.1.5.5.7.3.5", "KeyUsageIPSECTunnel": "1.3.6.1.5.5.7.3.6",
    "KeyUsageIPSECUser": "1.3.6.1.5.5.7.3.7", "KeyUsageTimeStamping": "1.3.6.1.5.5.7.3.8",
    "KeyUsageOCSPSigning": "1.3.6.1.5.5.7.3.9",
}


def _host_matches(cert: Any, name: str) -> bool:
    """Go's Certificate.VerifyHostname for DNS names and IPs (SANs only; one-label wildcards)."""
    import ipaddress

    from cryptography import x509

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
    from cryptography import x509

    if len(certs) < 2:
        return False
    try:
        for child, parent in zip(certs[1:], certs[:-1]):
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
    from datetime import datetime

    try:
        certs = _pem_or_b64_certs(need_str(s, 1))
    except BuiltinError:
        return [False, []]
    now = datetime.fromtimestamp(ctx.now_ns / 1e9, tz=UTC)
    if not _verify_chain(certs, now, {_KEY_USAGES["KeyUsageServerAuth"]}, None):
        return [False, []]
    return [True, [_cert_obj(c) for c in reversed(certs)]]


@builtin("crypto.x509.parse_and_verify_certificates_with_options")
def parse_and_verify_with_options(ctx: EvalContext, s: Any, options: Any) -> list[Any]:
    from datetime import datetime

    s = need_str(s, 1)
    if not isinstance(options, dict):
        raise BuiltinError(f"operand 2 must be object but got {type_name(options)}")
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
    out = [_cert_obj(c) for c in reversed(certs)]
    for c in out:
        c.pop("URIStrings", None)  # topdown returns x509.Certificate here without its extension fields
    return [True, out]


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


def _private_key_obj(k: Any) -> Any:
    """A private key as Go's encoding/json prints the crypto.PrivateKey topdown returns."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    if isinstance(k, rsa.RSAPrivateKey):
        n = k.private_numbers()
        return {"N": n.public_numbers.n, "E": n.public_numbers.e, "D": n.d, "Primes": [n.p, n.q],
                "Precomputed": {"Dp": n.dmp1, "Dq": n.dmq1, "Qinv": n.iqmp, "CRTValues": []}}
    if isinstance(k, ec.EllipticCurvePrivateKey):
        n = k.private_numbers()
        return {"Curve": {}, "X": n.public_numbers.x, "Y": n.public_numbers.y, "D": n.private_value}
    if isinstance(k, ed25519.Ed25519PrivateKey):
        raw = k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        from cryptography.hazmat.primitives.serialization import PublicFormat

        pub = k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw + pub).decode()
    raise BuiltinError("unsupported private key type")


@builtin("crypto.parse_private_keys")
def parse_private_keys(ctx: EvalContext, s: Any) -> Any:
    """PEM (or base64 of PEM) private keys: RSA PRIVATE KEY, PRIVATE KEY (PKCS#8), EC PRIVATE KEY
    blocks; other blocks are skipped. "" gives null and no keys an empty array, as in topdown."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    text = need_str(s, 1)
    if text == "":
        return None
    data = text.encode()
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        pass
    out = []
    for m in re.finditer(rb"-----BEGIN ([^-]+)-----.*?-----END \1-----", data, re.S):
        if m.group(1) not in (b"RSA PRIVATE KEY", b"PRIVATE KEY", b"EC PRIVATE KEY"):
            continue
        try:
            out.append(_private_key_obj(load_pem_private_key(m.group(0), None)))
        except (ValueError, TypeError) as exc:
            raise BuiltinError(f"failed to parse private key: {exc}") from None
    return out


@builtin("crypto.x509.parse_certificate_request")
def parse_certificate_request(ctx: EvalContext, s: Any) -> dict[str, Any]:
    """Go's x509.CertificateRequest through encoding/json (PEM, or base64 of PEM or DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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
    except ValueError as exc:
        raise BuiltinError(f"x509: {exc}") from None
    pk, pk_alg = _public_key(csr)
    exts = list(csr.extensions)
    ext_objs = [{"Id": _oid(e.oid.dotted_string), "Critical": e.critical, "Value": _b64(e.value.public_bytes())} for e in exts]
    out: dict[str, Any] = {
        "Raw": _b64(data),
        "RawTBSCertificateRequest": _b64(csr.tbs_certrequest_bytes),
        "RawSubjectPublicKeyInfo": _b64(csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)),
        "RawSubject": _b64(csr.subject.public_bytes()),
        "Version": 0,
        "Signature": _b64(csr.signature),
        "SignatureAlgorithm": _SIG_ALGS.get(csr.signature_algorithm_oid.dotted_string, 0),
        "PublicKeyAlgorithm": pk_alg,
        "PublicKey": pk,
        "Subject": _name(csr.subject),
        # the deprecated Attributes field: Go fills it from the extensionRequest attribute only
        "Attributes": [{"Type": [1, 2, 840, 113549, 1, 9, 14],
                        "Value": [[{"Type": e["Id"], "Value": e["Value"]} for e in ext_objs]]}] if ext_objs else None,
        "Extensions": ext_objs or None,
        "ExtraExtensions": None,
        "DNSNames": None,
        "EmailAddresses": None,
        "IPAddresses": None,
        "URIs": None,
    }
    for e in exts:
        if isinstance(e.value, x509.SubjectAlternativeName):
            out["DNSNames"] = e.value.get_values_for_type(x509.DNSName) or None
            out["EmailAddresses"] = e.value.get_values_for_type(x509.RFC822Name) or None
            out["IPAddresses"] = [str(i) for i in e.value.get_values_for_type(x509.IPAddress)] or None
    return out


@builtin("crypto.x509.parse_keypair")
def parse_keypair(ctx: EvalContext, cert: Any, key: Any) -> dict[str, Any]:
    """Go's tls.X509KeyPair as topdown returns it: DER chain, private key, parsed leaf."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

    def pem_or_b64(v: Any, pos: int) -> bytes:
        text = need_str(v, pos)
        if text.startswith("-----BEGIN"):
            return text.encode()
        try:
            return base64.b64decode(text, validate=True)
        except ValueError:
            raise BuiltinError("illegal base64 data") from None

    cert_data, key_data = pem_or_b64(cert, 1), pem_or_b64(key, 1)
    try:
        certs = x509.load_pem_x509_certificates(cert_data) if cert_data.startswith(b"-----BEGIN") else [x509.load_der_x509_certificate(cert_data)]
        if key_data.startswith(b"-----BEGIN"):
            pkey = load_pem_private_key(key_data, None)
        else:
            from cryptography.hazmat.primitives.serialization import load_der_private_key

            pkey = load_der_private_key(key_data, None)
    except (ValueError, TypeError) as exc:
        raise BuiltinError(f"tls: {exc}") from None
    leaf = certs[0]
    pub = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if pkey.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != pub:
        raise BuiltinError("tls: private key does not match public key")
    leaf_obj = _cert_obj(leaf)
    leaf_obj.pop("URIStrings", None)
    return {
        "Certificate": [_b64(c.public_bytes(Encoding.DER)) for c in certs],
        "PrivateKey": _private_key_obj(pkey),
        "SupportedSignatureAlgorithms": None,
        "OCSPStaple": None,
        "SignedCertificateTimestamps": None,
        "Leaf": leaf_obj,
    }
