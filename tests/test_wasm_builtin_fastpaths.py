"""The host builtins' fast paths give the answers of the slow ones: parsed key material kept by
its text never verifies a token the material would not, and net/url's precompiled checks refuse
what Go refuses (the differential corpus checks the same builtins against `opa eval`)."""

from __future__ import annotations

import datetime
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from bridge.opawasm.builtins import REGISTRY, EvalContext, jwt_keys
from bridge.opawasm.errors import BuiltinError
from bridge.opawasm.gocompat import neturl
from bridge.opawasm.gocompat.errors import GoError
from bridge.opawasm.host import HostConfig


def _ctx() -> EvalContext:
    return EvalContext(time.time_ns(), time.monotonic() + 5, HostConfig())


def _cert_and_key() -> tuple[str, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t.example.com")])
    start = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key


def _decode_verify(token: str, cert: str) -> list:
    return REGISTRY["io.jwt.decode_verify"](_ctx(), token, {"cert": cert})


def test_kept_key_material_still_refuses_a_token_of_another_key():
    cert, key = _cert_and_key()
    _, other = _cert_and_key()
    good = jwt.encode({"sub": "ann"}, key, algorithm="RS256")
    forged = jwt.encode({"sub": "ann", "admin": True}, other, algorithm="RS256")
    for _ in range(3):  # the first parses the certificate, the others reuse it
        assert _decode_verify(good, cert)[0] is True
        assert _decode_verify(forged, cert) == [False, {}, {}]
        assert REGISTRY["io.jwt.verify_rs256"](_ctx(), forged, cert) is False


def test_refused_material_is_refused_every_time_and_not_kept():
    cert, key = _cert_and_key()
    token = jwt.encode({"sub": "ann"}, key, algorithm="RS256")
    before = jwt_keys._cached_keys.cache_info().currsize
    for _ in range(2):
        with pytest.raises(BuiltinError, match="extra data after a PEM certificate block"):
            _decode_verify(token, cert + "extra")
    assert jwt_keys._cached_keys.cache_info().currsize == before


def test_material_over_the_cap_is_parsed_each_time(monkeypatch):
    cert, key = _cert_and_key()
    monkeypatch.setattr(jwt_keys, "KEY_CACHE_MAX_TEXT", 10)
    before = jwt_keys._cached_keys.cache_info()
    token = jwt.encode({"sub": "ann"}, key, algorithm="RS256")
    assert _decode_verify(token, cert)[0] is True
    after = jwt_keys._cached_keys.cache_info()
    assert (after.hits, after.misses) == (before.hits, before.misses)


@pytest.mark.parametrize(("url", "error"), [
    ("http://a\x7fb/", "invalid control character"),
    (":foo", "missing protocol scheme"),
    ("http://a b@example.com/", "invalid userinfo"),
    ("http://example.com:8a/", 'invalid port ":8a" after host'),
    ("http://example.com:\u0661/", "invalid port"),  # a non-ASCII digit is no port digit
])
def test_url_refusals(url, error):
    with pytest.raises(GoError, match=error):
        neturl.parse(url)


def test_url_fields():
    u = neturl.parse("a1+b-c.d://u:p@example.com:8443/a/b%20c/%2F?x=1#f")
    assert (u.scheme, u.hostname_port(), u.path, u.raw_path) == ("a1+b-c.d", ("example.com", "8443"), "/a/b c//", "/a/b%20c/%2F")
    with pytest.raises(GoError, match="first path segment in URL cannot contain colon"):
        neturl.parse("1a:b")  # a scheme starts with a letter: this is a path, and a bad one
    assert neturl.escape("/a b/é?", neturl.PATH) == "/a%20b/%C3%A9%3F"


def test_a_kept_token_verification_still_checks_its_claims_and_its_key_every_call():
    from bridge.opawasm.builtins import jwt as jwt_builtins

    secret = "s3cret-of-thirty-two-bytes-long!"
    token = jwt.encode({"sub": "ann", "exp": 2_000_000_000}, secret, algorithm="HS256")
    dv = REGISTRY["io.jwt.decode_verify"]
    before = jwt_builtins._cached_verification.cache_info()
    assert dv(_ctx(), token, {"secret": secret})[0] is True
    assert dv(_ctx(), token, {"secret": secret})[0] is True
    assert jwt_builtins._cached_verification.cache_info().hits > before.hits  # the second call was kept
    expired = 2_000_000_001 * 10**9
    assert dv(_ctx(), token, {"secret": secret, "time": expired}) == [False, {}, {}]
    assert dv(_ctx(), token, {"secret": "other"}) == [False, {}, {}]
    assert dv(_ctx(), token, {"secret": secret, "alg": "HS512"}) == [False, {}, {}]
    with pytest.raises(BuiltinError, match="3 sections"):  # errors are not kept: raised every time
        dv(_ctx(), token + ".x", {"secret": secret})
    with pytest.raises(BuiltinError, match="3 sections"):
        dv(_ctx(), token + ".x", {"secret": secret})
