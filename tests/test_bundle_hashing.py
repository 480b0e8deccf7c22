"""OPA's canonical file hashing: a table of tricky JSON, then the real opa as the referee."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from bridge.opabundle.archive import write_bundle
from bridge.opabundle.hashing import BundleHashError, canonical_json, file_digest, go_json_string
from bridge.opabundle.keys import generate_keypair, write_keypair
from bridge.opabundle.signing import sign_bundle

CANONICAL_CASES = {
    "nested keys sorted at every level": (
        b'{"b":{"z":1,"a":[3,{"y":2,"x":1}]},"a":null}',
        b'{"a":null,"b":{"a":[3,{"x":1,"y":2}],"z":1}}',
    ),
    "whitespace dropped": (b' \n{ "a" : [ true , false , null ] }\n ', b'{"a":[true,false,null]}'),
    "no HTML escaping": (b'{"h":"<a href=\\"x\\">&amp;</a>"}', b'{"h":"<a href=\\"x\\">&amp;</a>"}'),
    "HTML escapes decoded": (b'{"h":"\\u003c\\u0026\\u003e"}', b'{"h":"<&>"}'),
    "non-ASCII stays raw UTF-8": ('{"é":"日本\\u00e9"}'.encode(), '{"é":"日本é"}'.encode()),
    "keys sorted by code point": ('{"b":1,"é":2,"Z":3,"a":4}'.encode(), '{"Z":3,"a":4,"b":1,"é":2}'.encode()),
    "surrogate pair joined": (b'"\\ud83d\\ude00"', '"😀"'.encode()),
    "lone surrogate becomes U+FFFD": (b'"\\ud800x"', '"\ufffdx"'.encode()),
    "invalid UTF-8 becomes U+FFFD": (b'"a\xffb"', '"a\ufffdb"'.encode()),
    "U+2028/2029 always escaped": ('"a\u2028b\u2029"'.encode(), b'"a\\u2028b\\u2029"'),
    "control characters Go-style": (
        b'"\\u0001\\b\\f\\n\\r\\t\\u001f\\u007f\\"\\\\"',
        b'"\\u0001\\b\\f\\n\\r\\t\\u001f\x7f\\"\\\\"',
    ),
    "escaped slash decoded": (b'"a\\/b"', b'"a/b"'),
    "numbers exactly as written": (
        b"[1.0, 1e3, 1E+03, -0, 123456789012345678901234567890, 0.1e-7, 1.50, -12]",
        b"[1.0,1e3,1E+03,-0,123456789012345678901234567890,0.1e-7,1.50,-12]",
    ),
    "UTF-8 BOM stripped": (b'\xef\xbb\xbf{"a":1}', b'{"a":1}'),
    "duplicate key: last wins": (b'{"a":1,"a":2}', b'{"a":2}'),
    "empty file is null (OPA's YAML fallback)": (b"", b"null"),
}


@pytest.mark.parametrize(("raw", "want"), CANONICAL_CASES.values(), ids=CANONICAL_CASES.keys())
def test_canonical_json(raw: bytes, want: bytes) -> None:
    assert canonical_json(raw) == want


INVALID_JSON = {
    "NaN": b'{"a":NaN}',
    "Infinity": b"[Infinity]",
    "trailing data": b'{"a":1} x',
    "truncated": b'{"a":',
    "raw control character in string": b'"a\x01"',
}


@pytest.mark.parametrize("raw", INVALID_JSON.values(), ids=INVALID_JSON.keys())
def test_invalid_json_is_a_clear_error(raw: bytes) -> None:
    with pytest.raises(BundleHashError, match=r"^/data\.json: invalid JSON, cannot compute its canonical digest: "):
        file_digest("/data.json", raw)


def test_yaml_data_files_are_refused() -> None:
    with pytest.raises(BundleHashError, match=r"^/x/data\.yaml: YAML data files are not supported"):
        file_digest("/x/data.yaml", b"a: 1\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("path", "structured"),
    [
        ("/data.json", True),
        ("/a/b/data.json", True),
        ("/.manifest", True),
        ("/x/other.json", False),  # only the basename data.json is structured, not every .json
        ("/.manifest.pb", False),
        ("/policy.wasm", False),
        ("/x/policy.rego", False),
    ],
)
def test_which_files_are_hashed_canonically(path: str, structured: bool) -> None:
    raw = b'{ "b": 1, "a": 2 }'
    assert file_digest(path, raw) == sha(b'{"a":2,"b":1}' if structured else raw)


def test_other_hash_algorithms_and_unknown_one() -> None:
    assert file_digest("/p.rego", b"x", "SHA-512") == hashlib.sha512(b"x").hexdigest()
    assert file_digest("/data.json", b'{"b":1, "a":2}', "MD5") == hashlib.md5(b'{"a":2,"b":1}').hexdigest()
    with pytest.raises(BundleHashError, match=r"^/p\.rego: unsupported hashing algorithm: SHA-3$"):
        file_digest("/p.rego", b"x", "SHA-3")


def test_go_string_escaping_with_and_without_html() -> None:
    assert go_json_string("<a&b>é\u2028", escape_html=True) == '"\\u003ca\\u0026b\\u003eé\\u2028"'
    assert go_json_string("<a&b>é\u2028", escape_html=False) == '"<a&b>é\\u2028"'


# --- the real opa decides: every tricky value, signed by us, must verify in opa ---------------

TRICKY_DATA = (
    b'{"z":{"b":[1.0,1e3,1E+03,-0,123456789012345678901234567890,0.1e-7,1.50],"a":"<&>\\u003c"},'
    b'"uni":"\xc3\xa9\xe6\x97\xa5\\u00e9\\ud83d\\ude00\\ud800 \xe2\x80\xa8 \xff",'
    b'"ctl":"\\u0001\\b\\f\\n\\r\\t\\u007f\x7f\\/","A":{"y":{"d":1,"c":[{"k":2,"j":1}]}},"dup":1,"dup":2}'
)
TRICKY_MANIFEST = json.dumps(
    {"revision": "r<&>é", "roots": ["z", "uni", "ctl", "A", "dup", "pkg"], "metadata": {"z": 1.50, "a": "é\u2028<"}},
    ensure_ascii=False,
).encode()


def opa_verify(opa: Path, tmp: Path, archive: bytes, pub: Path, kid: str, alg: str) -> subprocess.CompletedProcess:
    bundle = tmp / "signed.tar.gz"
    bundle.write_bytes(archive)
    argv = [str(opa), "build", "-b", str(bundle), "--verification-key", str(pub),
            "--verification-key-id", kid, "--signing-alg", alg, "-o", str(tmp / "out.tar.gz")]  # fmt: skip
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False)


def test_opa_accepts_our_canonical_hashes_of_tricky_json(opa_bin: Path, tmp_path: Path) -> None:
    key = generate_keypair("ES256", kid="hash-test")
    _, pub = write_keypair(key, tmp_path / "keys")
    files = {
        "/pkg/policy.rego": b"package pkg\n\nallow if input.x == 1\n",
        "/data.json": TRICKY_DATA,
        "/.manifest": TRICKY_MANIFEST,
        "/pkg/notes.json": b'{ "raw":  true }\n',  # hashed over raw bytes
    }
    signed = sign_bundle(files, key)
    proc = opa_verify(opa_bin, tmp_path, write_bundle(signed), pub, "hash-test", "ES256")
    assert proc.returncode == 0, proc.stdout

    # ...and the check can fail: the same bundle with one data value changed is refused by opa.
    tampered = dict(signed, **{"/data.json": TRICKY_DATA.replace(b'"dup":2', b'"dup":3')})
    proc = opa_verify(opa_bin, tmp_path, write_bundle(tampered), pub, "hash-test", "ES256")
    assert proc.returncode != 0
    assert "data.json: digest mismatch" in proc.stdout


@pytest.mark.parametrize("raw", [b'\xef\xbb\xbf{"a":1}', b"", b"  \n"], ids=["BOM", "empty", "blank"])
def test_opa_agrees_on_digests_of_data_files_it_then_cannot_load(opa_bin: Path, tmp_path: Path, raw: bytes) -> None:
    # OPA hashes with util.Unmarshal (strips a BOM, falls back to YAML: "" -> null) but loads with a
    # stricter decoder, so verification passes and loading fails: the digest itself must agree.
    key = generate_keypair("ES256", kid="hash-test")
    _, pub = write_keypair(key, tmp_path / "keys")
    signed = sign_bundle({"/p.rego": b"package p\n", "/x/data.json": raw}, key)
    proc = opa_verify(opa_bin, tmp_path, write_bundle(signed), pub, "hash-test", "ES256")
    assert proc.returncode != 0
    assert "bundle load failed on /x/data.json" in proc.stdout
    assert "digest mismatch" not in proc.stdout
