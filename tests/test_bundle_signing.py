"""Signing and verification cross-checked with the real opa, in both directions.

opa signs -> we verify: `opa build --signing-key` output (rego and wasm, RS256 and ES256, with and
without a claims file) is accepted by `verify_archive`, and rejected with a wrong key, a wrong
scope, or one byte changed. We sign -> opa verifies: `opa build -b signed.tar.gz
--verification-key ...` accepts what `sign_archive` produces and gives the same verdict as our
verifier on every broken variant. Finally a real agent (`opa run --server`) loads our bundle.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bridge.opabundle.archive import read_bundle, write_bundle
from bridge.opabundle.keys import SigningKey, VerificationKey, generate_keypair, write_keypair
from bridge.opabundle.signing import sign_archive, sign_bundle
from bridge.opabundle.verify import (
    AlgorithmMismatchError,
    BadSignatureError,
    BundleVerificationError,
    DigestMismatchError,
    MalformedSignatureError,
    MissingFileError,
    ScopeMismatchError,
    UnknownKeyError,
    UnsignedBundleError,
    UnsignedFileError,
    keyring,
    verify_archive,
    verify_bundle,
)
from controlplane.infra.processes import start_opa_agent

POLICY = b"""package x.y

default allow := false

allow if input.user == data.x.y.admin
"""
DATA = '{"admin": "alice", "note": "<b>&é\u2028</b>", "n": [1.0, 1e3, 12345678901234567890]}'.encode()
ALGS = ("RS256", "ES256", "PS256")


@dataclass(frozen=True)
class Env:
    opa: Path
    dir: Path
    src: Path
    keys: dict[str, SigningKey]  # alg -> key (kid "groq")
    wrong: dict[str, SigningKey]  # alg -> another key of the same kind
    private: dict[str, Path]
    public: dict[str, Path]
    wrong_public: dict[str, Path]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess:
        # opa prints its errors on stdout, so merge the streams; run in src so module paths are relative
        return subprocess.run([str(self.opa), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60, check=False, cwd=self.src)  # fmt: skip

    def build(self, target: str, out: str, *extra: str | Path) -> bytes:
        entry = ["-e", "x/y/allow"] if target == "wasm" else []
        proc = self.run("build", "-b", ".", "-t", target, *entry, "-o", self.dir / out, *extra)
        assert proc.returncode == 0, proc.stdout
        return (self.dir / out).read_bytes()

    def opa_verify(self, archive: bytes, alg: str, *, wrong_key: bool = False, scope: str | None = None,
                   kid: str = "groq") -> subprocess.CompletedProcess:  # fmt: skip
        path = self.dir / "to-verify.tar.gz"
        path.write_bytes(archive)
        pub = self.wrong_public[alg] if wrong_key else self.public[alg]
        args = ["build", "-b", path, "--verification-key", pub, "--verification-key-id", kid,
                "--signing-alg", alg, "-o", self.dir / "verified.tar.gz"]  # fmt: skip
        if scope:
            args += ["--scope", scope]
        return self.run(*args)


@pytest.fixture(scope="module")
def env(opa_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("signing")
    src = root / "src"
    (src / "x" / "y").mkdir(parents=True)
    (src / "x" / "y" / "policy.rego").write_bytes(POLICY)
    (src / "x" / "y" / "data.json").write_bytes(DATA)
    keys, wrong, private, public, wrong_public = {}, {}, {}, {}, {}
    for alg in ALGS:
        keys[alg] = generate_keypair(alg, kid="groq")
        private[alg], public[alg] = write_keypair(keys[alg], root / "keys" / alg)
        wrong[alg] = generate_keypair(alg, kid="groq")
        _, wrong_public[alg] = write_keypair(wrong[alg], root / "wrong" / alg)
    return Env(opa_bin, root, src, keys, wrong, private, public, wrong_public)


def jws_parts(files: dict[str, bytes]) -> list[str]:
    doc = json.loads(files["/.signatures.json"])
    assert len(doc["signatures"]) == 1
    return doc["signatures"][0].split(".")


def decode(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def flip_one_byte(files: dict[str, bytes], path: str) -> dict[str, bytes]:
    content = bytearray(files[path])
    content[len(content) // 2] ^= 0x01
    return {**files, path: bytes(content)}


# --- our output format is opa's output format ------------------------------------------------


@pytest.mark.parametrize("target", ["rego", "wasm"])
def test_resigning_an_opa_rs256_bundle_reproduces_its_signatures_file_byte_for_byte(env: Env, target: str) -> None:
    # RS256 (PKCS#1 v1.5) is deterministic, so identical header and payload give an identical file.
    files = read_bundle(env.build(target, f"opa-{target}-rs256.tar.gz", "--signing-key", env.private["RS256"]))
    ours = sign_bundle(files, SigningKey("default", "RS256", env.keys["RS256"].private_pem))
    assert ours["/.signatures.json"] == files["/.signatures.json"]
    assert set(ours) == set(files)


@pytest.mark.parametrize("target", ["rego", "wasm"])
def test_es256_header_and_payload_match_opa(env: Env, target: str) -> None:
    files = read_bundle(env.build(target, f"opa-{target}-es256.tar.gz", "--signing-key", env.private["ES256"],
                                  "--signing-alg", "ES256"))  # fmt: skip
    ours = sign_bundle(files, SigningKey("default", "ES256", env.keys["ES256"].private_pem))
    assert jws_parts(ours)[:2] == jws_parts(files)[:2]
    assert decode(jws_parts(ours)[0]) == {"alg": "ES256", "kid": "default", "typ": "JWT"}
    names = [f["name"] for f in decode(jws_parts(ours)[1])["files"]]
    want = ["x/y/policy.rego", "data.json", ".manifest"]
    assert names == ([*want[:2], "policy.wasm", *want[2:]] if target == "wasm" else want)


def test_claims_match_an_opa_claims_file(env: Env) -> None:
    claims = {"scope": "prod", "iss": "groqpolicy", "iat": 1700000000}
    (env.dir / "claims.json").write_text(json.dumps(claims))
    files = read_bundle(env.build("rego", "opa-claims.tar.gz", "--signing-key", env.private["RS256"],
                                  "--claims-file", env.dir / "claims.json"))  # fmt: skip
    ours = sign_bundle(files, env.keys["RS256"], **claims)
    opa_payload, our_payload = decode(jws_parts(files)[1]), decode(jws_parts(ours)[1])
    # opa drops the deprecated keyid claim (and the header kid) when a claims file is given; we keep both
    assert our_payload.pop("keyid") == "groq"
    assert our_payload == opa_payload
    assert list(our_payload) == sorted(our_payload)


def test_sign_archive_replaces_the_signature_and_is_deterministic(env: Env) -> None:
    opa_signed = env.build("rego", "opa-replace.tar.gz", "--signing-key", env.private["ES256"], "--signing-alg", "ES256")
    key = env.keys["RS256"]
    first = sign_archive(opa_signed, key)
    assert sign_archive(opa_signed, key) == first  # RS256 + deterministic tar.gz: stable ETags
    assert sign_archive(first, key) == first
    assert verify_archive(first, keyring(key.verification_key())).keyid == "groq"
    with pytest.raises(BadSignatureError):
        verify_archive(first, keyring(VerificationKey("groq", "RS256", env.wrong["RS256"].verification_key().public_pem)))


# --- opa signs, we verify ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["rego", "wasm"])
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("claims", [None, {"scope": "prod", "iss": "ci", "iat": 1700000000}], ids=["kid", "claims"])
def test_we_verify_what_opa_signs(env: Env, target: str, alg: str, claims: dict | None) -> None:
    extra: list[str | Path] = ["--signing-key", env.private[alg], "--signing-alg", alg]
    if claims:
        (env.dir / "claims.json").write_text(json.dumps(claims))
        extra += ["--claims-file", env.dir / "claims.json"]
    data = env.build(target, f"opa-{target}-{alg}.tar.gz", *extra)
    pub = env.keys[alg].verification_key()
    keys = {"default": VerificationKey("default", alg, pub.public_pem)}
    scope = claims["scope"] if claims else None
    keyid = "default" if claims else None  # with a claims file opa writes no kid: agents must set signing.keyid

    payload = verify_archive(data, keys, keyid=keyid, scope=scope)
    assert (payload.scope, payload.iss, payload.iat) == ((scope, "ci", 1700000000) if claims else ("", "", 0))
    assert {f.name for f in payload.files} >= {"x/y/policy.rego", "data.json", ".manifest"}

    wrong = {"default": VerificationKey("default", alg, env.wrong[alg].verification_key().public_pem)}
    with pytest.raises(BadSignatureError):
        verify_archive(data, wrong, keyid=keyid, scope=scope)
    with pytest.raises(ScopeMismatchError, match=r"^signature: scope mismatch \(want: 'other', got: "):
        verify_archive(data, keys, keyid=keyid, scope="other")
    if claims:
        with pytest.raises(UnknownKeyError, match=r"^signature: no key id"):
            verify_archive(data, keys, scope=scope)
    target_file = "/policy.wasm" if target == "wasm" else "/x/y/policy.rego"
    with pytest.raises(DigestMismatchError, match=rf"^{target_file}: digest mismatch \(want: [0-9a-f]{{64}}, got: "):
        verify_bundle(flip_one_byte(read_bundle(data), target_file), keys, keyid=keyid, scope=scope)


# --- we sign, opa verifies --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["rego", "wasm"])
@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("scope", [None, "prod"])
def test_opa_verifies_what_we_sign(env: Env, target: str, alg: str, scope: str | None) -> None:
    unsigned = env.build(target, f"unsigned-{target}.tar.gz")
    signed = sign_archive(unsigned, env.keys[alg], scope=scope, iss="groqpolicy", iat=1700000000)
    proc = env.opa_verify(signed, alg, scope=scope)
    assert proc.returncode == 0, proc.stdout
    # ...and it is not a rubber stamp: the same bundle with one byte changed is refused.
    target_file = "/policy.wasm" if target == "wasm" else "/x/y/policy.rego"
    proc = env.opa_verify(write_bundle(flip_one_byte(read_bundle(signed), target_file)), alg, scope=scope)
    assert proc.returncode != 0
    assert f"{target_file[1:]}: digest mismatch" in proc.stdout


@dataclass(frozen=True)
class Verdict:
    mutate: Callable[[dict[str, bytes]], dict[str, bytes]]
    error: type[BundleVerificationError] | None  # what our verifier raises (None: accepted)
    opa_says: str  # substring of opa's error ("" when opa accepts)
    sign_scope: str | None = None
    verify_scope: str | None = None
    wrong_key: bool = False
    verify_alg: str = "RS256"


def _with_signatures(files: dict[str, bytes], tokens: list[str]) -> dict[str, bytes]:
    return {**files, "/.signatures.json": json.dumps({"signatures": tokens}).encode()}


def _token(files: dict[str, bytes]) -> str:
    return json.loads(files["/.signatures.json"])["signatures"][0]


SAME_VERDICT = {
    "intact": Verdict(lambda f: f, None, ""),
    "data.json re-spaced (same JSON)": Verdict(
        lambda f: {**f, "/data.json": f["/data.json"].replace(b",", b" ,\n  ").replace(b":", b" : ")}, None, ""),
    "data.json re-serialised by Python (1e3 becomes 1000.0)": Verdict(
        lambda f: {**f, "/data.json": json.dumps(json.loads(f["/data.json"]), indent=1).encode()},
        DigestMismatchError, "data.json: digest mismatch"),
    "policy changed by one byte": Verdict(lambda f: flip_one_byte(f, "/x/y/policy.rego"), DigestMismatchError,
                                          "x/y/policy.rego: digest mismatch"),
    "data value changed": Verdict(lambda f: {**f, "/data.json": f["/data.json"].replace(b"alice", b"mallory")},
                                  DigestMismatchError, "data.json: digest mismatch"),
    "manifest changed": Verdict(lambda f: {**f, "/.manifest": f["/.manifest"].replace(b'"revision":""', b'"revision":"x"')},
                                DigestMismatchError, ".manifest: digest mismatch"),
    "file added": Verdict(lambda f: {**f, "/x/y/extra.rego": b"package x.y\n\nextra := 1\n"}, UnsignedFileError,
                          "file x/y/extra.rego not included in bundle signature"),
    "file removed": Verdict(lambda f: {k: v for k, v in f.items() if k != "/x/y/policy.rego"}, MissingFileError,
                            "specified in bundle signatures but not found in the target bundle"),
    "unsigned": Verdict(lambda f: {k: v for k, v in f.items() if k != "/.signatures.json"}, UnsignedBundleError,
                        "bundle missing .signatures.json file"),
    "no JWT": Verdict(lambda f: _with_signatures(f, []), MalformedSignatureError, "missing JWT (expected exactly one)"),
    "two JWTs": Verdict(lambda f: _with_signatures(f, [_token(f)] * 2), MalformedSignatureError,
                        "multiple JWTs not supported (expected exactly one)"),
    "wrong key": Verdict(lambda f: f, BadSignatureError, "failed to verify JWT signature", wrong_key=True),
    "verifier configured for ES256": Verdict(lambda f: f, AlgorithmMismatchError, "failed to verify JWT signature",
                                             verify_alg="ES256"),
    "scoped bundle, unscoped verifier": Verdict(lambda f: f, ScopeMismatchError, "scope mismatch", sign_scope="prod"),
    "wrong scope": Verdict(lambda f: f, ScopeMismatchError, "scope mismatch", sign_scope="prod", verify_scope="dev"),
    "right scope": Verdict(lambda f: f, None, "", sign_scope="prod", verify_scope="prod"),
}  # fmt: skip


@pytest.mark.parametrize("case", SAME_VERDICT.values(), ids=SAME_VERDICT.keys())
def test_opa_and_we_give_the_same_verdict(env: Env, case: Verdict) -> None:
    files = read_bundle(env.build("rego", "unsigned-verdict.tar.gz"))
    signed = case.mutate(sign_bundle(files, env.keys["RS256"], scope=case.sign_scope))
    archive = write_bundle(signed)

    vkey = (env.wrong if case.wrong_key else env.keys)["RS256"].verification_key()
    if case.verify_alg != "RS256":
        vkey = VerificationKey("groq", case.verify_alg, env.keys[case.verify_alg].verification_key().public_pem)
    if case.error is None:
        verify_archive(archive, keyring(vkey), scope=case.verify_scope)
    else:
        with pytest.raises(case.error):
            verify_archive(archive, keyring(vkey), scope=case.verify_scope)

    proc = env.opa_verify(archive, case.verify_alg, wrong_key=case.wrong_key, scope=case.verify_scope)
    if case.error is None:
        assert proc.returncode == 0, proc.stdout
    else:
        assert proc.returncode != 0
        assert case.opa_says in proc.stdout


# --- a real agent loads our signed bundle ------------------------------------------------------


def agent_config(tmp: Path, bundle: Path, key: SigningKey, signing: dict) -> Path:
    config = {
        "keys": {key.kid: key.verification_key().to_opa_config()},
        "bundles": {"b": {"resource": bundle.as_uri(), "signing": signing}},
    }
    path = tmp / "opa.json"
    path.write_text(json.dumps(config))
    return path


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signing", [{"keyid": "groq", "scope": "prod"}, {"scope": "prod"}], ids=["keyid", "kid-header"])
def test_real_agent_activates_our_bundle(env: Env, tmp_path: Path, signing: dict) -> None:
    key = env.keys["ES256"]
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(sign_archive(env.build("rego", "unsigned-agent.tar.gz"), key, scope="prod"))
    agent = start_opa_agent(agent_config(tmp_path, bundle, key, signing), tmp_path / "agent")
    try:
        with httpx.Client(base_url=agent.extra["url"], timeout=5) as http:
            assert wait_until(lambda: http.get("/health", params={"bundles": "true"}).status_code == 200), agent.log()
            result = http.post("/v1/data/x/y/allow", json={"input": {"user": "alice"}}).json()
            assert result["result"] is True
    finally:
        agent.stop()


def test_real_agent_refuses_a_tampered_bundle(env: Env, tmp_path: Path) -> None:
    key = env.keys["ES256"]
    signed = read_bundle(sign_archive(env.build("rego", "unsigned-agent.tar.gz"), key, scope="prod"))
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(write_bundle(flip_one_byte(signed, "/x/y/policy.rego")))
    agent = start_opa_agent(agent_config(tmp_path, bundle, key, {"keyid": "groq", "scope": "prod"}), tmp_path / "agent")
    try:
        assert wait_until(lambda: "x/y/policy.rego: digest mismatch" in agent.log()), agent.log()
        with httpx.Client(base_url=agent.extra["url"], timeout=5) as http:
            assert http.get("/health", params={"bundles": "true"}).status_code != 200
    finally:
        agent.stop()


def test_any_signing_block_makes_the_agent_require_a_signature(env: Env, tmp_path: Path) -> None:
    # opa v1.22.3 requires a signature as soon as `bundles.<name>.signing` exists, even without a keyid
    # (config.go injects a signature-optional config only when the block is absent).
    key = env.keys["ES256"]
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(env.build("rego", "unsigned-agent.tar.gz"))
    agent = start_opa_agent(agent_config(tmp_path, bundle, key, {"scope": "prod"}), tmp_path / "agent")
    try:
        assert wait_until(lambda: "bundle missing .signatures.json file" in agent.log()), agent.log()
    finally:
        agent.stop()
