"""The record key: generated once into the state dir (0600 in a 0700 directory) or configured, a key id
derived from the key, rotation that keeps retired keys trusted, and no key material in a repr or log."""

from __future__ import annotations

import logging
import shutil
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.kernel.config import Settings
from bridge.kernel.errors import ConfigError
from controlplane.infra.recordkeys import FORGED, UNKNOWN_KEY, RecordKeys, ensure_record_keys, export_public


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_on_first_start_and_reused(tmp_path, caplog):
    settings = Settings(state_dir=tmp_path / "state")
    with caplog.at_level(logging.DEBUG):
        keys = ensure_record_keys(settings)
    key_dir = tmp_path / "state" / "record-keys"
    assert mode(key_dir) == 0o700 and mode(key_dir / "signing.pem") == 0o600
    assert mode(key_dir / "trusted") == 0o700 and mode(key_dir / "trusted" / f"{keys.kid}.pem") == 0o600
    assert keys.kid.startswith("rk-") and len(keys.kid) == 19
    assert ensure_record_keys(settings).kid == keys.kid  # the same key at the next start
    pem = (key_dir / "signing.pem").read_text()
    secret_line = pem.splitlines()[1]
    assert secret_line not in caplog.text and "PRIVATE" not in caplog.text and secret_line not in repr(keys)


def test_signatures_name_what_is_wrong():
    keys, other = RecordKeys.generate(), RecordKeys.generate()
    sig = keys.sign("domain", {"a": 1, "b": [2.5]})
    assert keys.check("domain", {"b": [2.5], "a": 1}, keys.kid, sig) == ""  # canonical: key order does not matter
    assert keys.check("domain", {"a": 2, "b": [2.5]}, keys.kid, sig) == FORGED
    assert keys.check("other-domain", {"a": 1, "b": [2.5]}, keys.kid, sig) == FORGED
    assert keys.check("domain", {"a": 1, "b": [2.5]}, keys.kid, "not base64!") == FORGED
    assert keys.check("domain", {"a": 1, "b": [2.5]}, other.kid, other.sign("domain", {"a": 1, "b": [2.5]})) == UNKNOWN_KEY


def test_rotation_keeps_the_retired_key_trusted(tmp_path):
    settings = Settings(state_dir=tmp_path / "state")
    old = ensure_record_keys(settings)
    signed_before = old.sign("d", {"n": 1})
    shutil.move(tmp_path / "state" / "record-keys" / "signing.pem", tmp_path / "retired.pem")  # rotate: move it away, restart
    new = ensure_record_keys(settings)
    assert new.kid != old.kid and set(new.trusted) == {old.kid, new.kid}
    assert new.check("d", {"n": 1}, old.kid, signed_before) == ""
    (tmp_path / "state" / "record-keys" / "trusted" / f"{old.kid}.pem").unlink()  # distrust it for good
    assert ensure_record_keys(settings).check("d", {"n": 1}, old.kid, signed_before) == UNKNOWN_KEY


def test_replicas_share_a_configured_key_and_trust_more_keys_by_directory(tmp_path):
    shared = tmp_path / "secrets" / "record-key.pem"
    a = ensure_record_keys(Settings(state_dir=tmp_path / "a", record_key_file=shared))
    b = ensure_record_keys(Settings(state_dir=tmp_path / "b", record_key_file=shared))
    assert a.kid == b.kid and mode(shared) == 0o600
    other = ensure_record_keys(Settings(state_dir=tmp_path / "c"))
    export_public(other, tmp_path / "trusted-elsewhere")
    c = ensure_record_keys(Settings(state_dir=tmp_path / "a", record_key_file=shared,
                                    record_trusted_keys=tmp_path / "trusted-elsewhere"))
    assert set(c.trusted) == {a.kid, other.kid}


def test_bad_key_files_are_config_errors(tmp_path):
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.pem").write_bytes(ec_key)
    with pytest.raises(ConfigError, match=r"ec.pem: an Ed25519 key is required, got ECPrivateKey"):
        ensure_record_keys(Settings(state_dir=tmp_path / "s", record_key_file=tmp_path / "ec.pem"))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"junk.pem: not an unencrypted PEM private key"):
        ensure_record_keys(Settings(state_dir=tmp_path / "s", record_key_file=tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match=r"GROQPOLICY_RECORD_TRUSTED_KEYS='.*nowhere': no such file or directory"):
        ensure_record_keys(Settings(state_dir=tmp_path / "s", record_trusted_keys=tmp_path / "nowhere"))
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "bad.pem").write_text("nope")
    with pytest.raises(ConfigError, match=r"trusted record key .*bad.pem: not a PEM public key"):
        ensure_record_keys(Settings(state_dir=tmp_path / "s", record_trusted_keys=tmp_path / "trusted"))
