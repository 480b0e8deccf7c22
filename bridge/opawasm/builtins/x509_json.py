"""Go's crypto/x509 values as encoding/json prints them: what topdown's x509 and key builtins
return (`x509.Certificate`, `x509.CertificateRequest`, `pkix.Name`, public and private keys),
built from pyca/cryptography's objects. Fields Go fills from parts cryptography does not expose
in the same shape (name constraints, policy mappings) keep Go's zero value."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import AuthorityInformationAccessOID

from bridge.opawasm.errors import BuiltinError

_NAME_FIELDS = (
    ("Country", "2.5.4.6"), ("Organization", "2.5.4.10"), ("OrganizationalUnit", "2.5.4.11"),
    ("Locality", "2.5.4.7"), ("Province", "2.5.4.8"), ("StreetAddress", "2.5.4.9"), ("PostalCode", "2.5.4.17"),
)
# x509.SignatureAlgorithm and x509.ExtKeyUsage: Go's enum values by OID
_SIG_ALGS = {
    "1.2.840.113549.1.1.2": 1, "1.2.840.113549.1.1.4": 2, "1.2.840.113549.1.1.5": 3, "1.2.840.113549.1.1.11": 4,
    "1.2.840.113549.1.1.12": 5, "1.2.840.113549.1.1.13": 6, "1.2.840.10040.4.3": 7, "2.16.840.1.101.3.4.3.2": 8,
    "1.2.840.10045.4.1": 9, "1.2.840.10045.4.3.2": 10, "1.2.840.10045.4.3.3": 11, "1.2.840.10045.4.3.4": 12,
    "1.3.101.112": 16,
}
EKU = {"2.5.29.37.0": 0, "1.3.6.1.5.5.7.3.1": 1, "1.3.6.1.5.5.7.3.2": 2, "1.3.6.1.5.5.7.3.3": 3,
       "1.3.6.1.5.5.7.3.4": 4, "1.3.6.1.5.5.7.3.5": 5, "1.3.6.1.5.5.7.3.6": 6, "1.3.6.1.5.5.7.3.7": 7,
       "1.3.6.1.5.5.7.3.8": 8, "1.3.6.1.5.5.7.3.9": 9}

# x509.Certificate's fields that only some extensions fill, at Go's zero value
_CERT_ZERO: dict[str, Any] = {
    "KeyUsage": 0, "ExtraExtensions": None, "UnhandledCriticalExtensions": None, "ExtKeyUsage": None,
    "UnknownExtKeyUsage": None, "BasicConstraintsValid": False, "IsCA": False, "MaxPathLen": 0,
    "MaxPathLenZero": False, "SubjectKeyId": None, "AuthorityKeyId": None, "OCSPServer": None,
    "IssuingCertificateURL": None, "DNSNames": None, "EmailAddresses": None, "IPAddresses": None, "URIs": None,
    "PermittedDNSDomainsCritical": False, "PermittedDNSDomains": None, "ExcludedDNSDomains": None,
    "PermittedIPRanges": None, "ExcludedIPRanges": None, "PermittedEmailAddresses": None,
    "ExcludedEmailAddresses": None, "PermittedURIDomains": None, "ExcludedURIDomains": None,
    "CRLDistributionPoints": None, "PolicyIdentifiers": None, "Policies": None, "InhibitAnyPolicy": 0,
    "InhibitAnyPolicyZero": False, "InhibitPolicyMapping": 0, "InhibitPolicyMappingZero": False,
    "RequireExplicitPolicy": 0, "RequireExplicitPolicyZero": False, "PolicyMappings": None, "URIStrings": None,
}


def oid(dotted: str) -> list[int]:
    return [int(x) for x in dotted.split(".")]


def b64(b: bytes | None) -> str | None:
    """[]byte as encoding/json prints it (standard base64; nil is null)."""
    return None if b is None else base64.b64encode(b).decode()


def name_json(n: x509.Name) -> dict[str, Any]:
    """pkix.Name."""
    attrs = [a for rdn in n.rdns for a in rdn]
    out: dict[str, Any] = {}
    for key, dotted in _NAME_FIELDS:
        vals = [a.value for a in attrs if a.oid.dotted_string == dotted]
        out[key] = vals or None
    sn = [a.value for a in attrs if a.oid.dotted_string == "2.5.4.5"]
    cn = [a.value for a in attrs if a.oid.dotted_string == "2.5.4.3"]
    out["SerialNumber"] = sn[-1] if sn else ""
    out["CommonName"] = cn[-1] if cn else ""
    out["Names"] = [{"Type": oid(a.oid.dotted_string), "Value": a.value} for a in attrs] or None
    out["ExtraNames"] = None
    return out


def public_key_json(holder: x509.Certificate | x509.CertificateSigningRequest) -> tuple[Any, int]:
    """(PublicKey, PublicKeyAlgorithm) of a certificate or a CSR."""
    k = holder.public_key()
    if isinstance(k, rsa.RSAPublicKey):
        rn = k.public_numbers()
        return {"N": rn.n, "E": rn.e}, 1
    if isinstance(k, dsa.DSAPublicKey):
        return {"Y": k.public_numbers().y}, 2
    if isinstance(k, ec.EllipticCurvePublicKey):
        en = k.public_numbers()
        return {"Curve": {}, "X": en.x, "Y": en.y}, 3
    if isinstance(k, ed25519.Ed25519PublicKey):
        return b64(k.public_bytes(Encoding.Raw, PublicFormat.Raw)), 4
    return None, 0


def private_key_json(k: Any) -> Any:
    """The crypto.PrivateKey topdown returns (RSA, EC or Ed25519)."""
    if isinstance(k, rsa.RSAPrivateKey):
        rn = k.private_numbers()
        return {"N": rn.public_numbers.n, "E": rn.public_numbers.e, "D": rn.d, "Primes": [rn.p, rn.q],
                "Precomputed": {"Dp": rn.dmp1, "Dq": rn.dmq1, "Qinv": rn.iqmp, "CRTValues": []}}
    if isinstance(k, ec.EllipticCurvePrivateKey):
        en = k.private_numbers()
        return {"Curve": {}, "X": en.public_numbers.x, "Y": en.public_numbers.y, "D": en.private_value}
    if isinstance(k, ed25519.Ed25519PrivateKey):
        raw = k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        pub = k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw + pub).decode()
    raise BuiltinError("unsupported private key type")


def extensions_json(exts: x509.Extensions | list[x509.Extension[Any]]) -> list[dict[str, Any]] | None:
    """[]pkix.Extension."""
    return [{"Id": oid(e.oid.dotted_string), "Critical": e.critical, "Value": b64(e.value.public_bytes())}
            for e in exts] or None


def certificate_json(c: x509.Certificate) -> dict[str, Any]:
    """x509.Certificate: identity, keys and validity, then what each known extension fills in."""
    pk, pk_alg = public_key_json(c)
    out: dict[str, Any] = {
        "Raw": b64(c.public_bytes(Encoding.DER)),
        "RawTBSCertificate": b64(c.tbs_certificate_bytes),
        "RawSubjectPublicKeyInfo": b64(c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)),
        "RawSubject": b64(c.subject.public_bytes()),
        "RawIssuer": b64(c.issuer.public_bytes()),
        "Signature": b64(c.signature),
        "SignatureAlgorithm": _SIG_ALGS.get(c.signature_algorithm_oid.dotted_string, 0),
        "PublicKeyAlgorithm": pk_alg,
        "PublicKey": pk,
        "Version": c.version.value + 1,
        "SerialNumber": c.serial_number,
        "Issuer": name_json(c.issuer),
        "Subject": name_json(c.subject),
        "NotBefore": c.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "NotAfter": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "Extensions": extensions_json(c.extensions),
        **_CERT_ZERO,
    }
    for e in c.extensions:
        for kind, fill in _EXTENSION_FIELDS:
            if isinstance(e.value, kind):
                fill(out, e.value)
                break
    return out


def certificate_request_json(csr: x509.CertificateSigningRequest, der: bytes) -> dict[str, Any]:
    """x509.CertificateRequest (`der`: the request as parsed, Go's Raw)."""
    pk, pk_alg = public_key_json(csr)
    exts = list(csr.extensions)
    ext_objs = extensions_json(exts)
    out: dict[str, Any] = {
        "Raw": b64(der),
        "RawTBSCertificateRequest": b64(csr.tbs_certrequest_bytes),
        "RawSubjectPublicKeyInfo": b64(csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)),
        "RawSubject": b64(csr.subject.public_bytes()),
        "Version": 0,
        "Signature": b64(csr.signature),
        "SignatureAlgorithm": _SIG_ALGS.get(csr.signature_algorithm_oid.dotted_string, 0),
        "PublicKeyAlgorithm": pk_alg,
        "PublicKey": pk,
        "Subject": name_json(csr.subject),
        # the deprecated Attributes field: Go fills it from the extensionRequest attribute only
        "Attributes": [{"Type": [1, 2, 840, 113549, 1, 9, 14],
                        "Value": [[{"Type": e["Id"], "Value": e["Value"]} for e in ext_objs]]}] if ext_objs else None,
        "Extensions": ext_objs,
        "ExtraExtensions": None,
        "DNSNames": None,
        "EmailAddresses": None,
        "IPAddresses": None,
        "URIs": None,
    }
    for e in exts:
        if isinstance(e.value, x509.SubjectAlternativeName):
            _san(out, e.value, uri_strings=False)
    return out


# -- what each extension fills in ------------------------------------------------------------------


def _san(out: dict[str, Any], v: x509.SubjectAlternativeName, uri_strings: bool = True) -> None:
    out["DNSNames"] = v.get_values_for_type(x509.DNSName) or None
    out["EmailAddresses"] = v.get_values_for_type(x509.RFC822Name) or None
    out["IPAddresses"] = [str(i) for i in v.get_values_for_type(x509.IPAddress)] or None
    if uri_strings:
        out["URIStrings"] = v.get_values_for_type(x509.UniformResourceIdentifier) or None


def _basic_constraints(out: dict[str, Any], v: x509.BasicConstraints) -> None:
    out["BasicConstraintsValid"] = True
    out["IsCA"] = v.ca
    out["MaxPathLen"] = -1 if v.path_length is None else v.path_length
    out["MaxPathLenZero"] = v.path_length == 0


def _key_usage(out: dict[str, Any], v: x509.KeyUsage) -> None:
    # encipher_only/decipher_only raise unless key_agreement is set
    bits = [v.digital_signature, v.content_commitment, v.key_encipherment, v.data_encipherment, v.key_agreement,
            v.key_cert_sign, v.crl_sign,
            v.encipher_only if v.key_agreement else False, v.decipher_only if v.key_agreement else False]
    out["KeyUsage"] = sum(1 << i for i, b in enumerate(bits) if b)


def _ext_key_usage(out: dict[str, Any], v: x509.ExtendedKeyUsage) -> None:
    out["ExtKeyUsage"] = [EKU[o.dotted_string] for o in v if o.dotted_string in EKU] or None
    out["UnknownExtKeyUsage"] = [oid(o.dotted_string) for o in v if o.dotted_string not in EKU] or None


def _subject_key_id(out: dict[str, Any], v: x509.SubjectKeyIdentifier) -> None:
    out["SubjectKeyId"] = b64(v.digest)


def _authority_key_id(out: dict[str, Any], v: x509.AuthorityKeyIdentifier) -> None:
    out["AuthorityKeyId"] = b64(v.key_identifier)


def _authority_info(out: dict[str, Any], v: x509.AuthorityInformationAccess) -> None:
    aia = AuthorityInformationAccessOID
    out["OCSPServer"] = [d.access_location.value for d in v if d.access_method == aia.OCSP] or None
    out["IssuingCertificateURL"] = [d.access_location.value for d in v if d.access_method == aia.CA_ISSUERS] or None


def _crl_points(out: dict[str, Any], v: x509.CRLDistributionPoints) -> None:
    out["CRLDistributionPoints"] = [n.value for dp in v for n in (dp.full_name or [])] or None


def _policies(out: dict[str, Any], v: x509.CertificatePolicies) -> None:
    out["PolicyIdentifiers"] = [oid(p.policy_identifier.dotted_string) for p in v] or None


_EXTENSION_FIELDS: tuple[tuple[type, Callable[[dict[str, Any], Any], None]], ...] = (
    (x509.SubjectAlternativeName, _san),
    (x509.BasicConstraints, _basic_constraints),
    (x509.KeyUsage, _key_usage),
    (x509.ExtendedKeyUsage, _ext_key_usage),
    (x509.SubjectKeyIdentifier, _subject_key_id),
    (x509.AuthorityKeyIdentifier, _authority_key_id),
    (x509.AuthorityInformationAccess, _authority_info),
    (x509.CRLDistributionPoints, _crl_points),
    (x509.CertificatePolicies, _policies),
)
