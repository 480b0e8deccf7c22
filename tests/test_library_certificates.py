"""The library's own policies' certificates, kept by content with the real opa: a second start
certifies nothing, a changed policy is certified again alone, a planted or altered cache file is not
believed, and a policy that fails a check keeps the library from being published (fail closed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from controlplane.certification.certificate import verify
from controlplane.certification.certifier import CertificationRefused
from controlplane.certification.checks import PolicyChecks
from controlplane.certification.library import LibraryCertificates
from controlplane.infra.recordkeys import RecordKeys
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lib") / "rego"
    shutil.copytree(REPO_ROOT / "rego", root)
    return root


@pytest.fixture(scope="module")
def keys() -> RecordKeys:
    return RecordKeys.generate()


def certificates(opa_bin: Path, library: Path, keys: RecordKeys, cache: Path) -> LibraryCertificates:
    return LibraryCertificates(PolicyChecks(lambda: opa_bin, lambda: [library]), keys, lambda: [library], cache)


def test_a_start_certifies_only_what_changed(opa_bin, library, keys, tmp_path):
    cache = tmp_path / "cache"
    first = certificates(opa_bin, library, keys, cache)
    certs = first()
    assert sorted(first.certified) == sorted(certs) and len(certs) == 7
    assert all(verify(c, keys) == "" and c["certified"] for c in certs.values())

    again = certificates(opa_bin, library, keys, cache)  # a restart: everything from the cache
    assert again() == certs and again.certified == []

    policy = library / "policies" / "risk_management" / "policy.rego"
    policy.write_text(policy.read_text() + "\n# a comment changes the text, so the certificate\n")
    changed = certificates(opa_bin, library, keys, cache)
    after = changed()
    assert changed.certified == ["risk_management"]
    assert after["risk_management"]["policy_sha256"] != certs["risk_management"]["policy_sha256"]
    assert {k: v for k, v in after.items() if k != "risk_management"} == \
        {k: v for k, v in certs.items() if k != "risk_management"}


def test_a_cache_file_that_was_altered_or_signed_by_another_key_is_certified_again(opa_bin, library, keys, tmp_path):
    cache = tmp_path / "cache"
    certs = certificates(opa_bin, library, keys, cache)()
    [altered] = cache.glob("data_governance-*.json")
    entry = json.loads(altered.read_bytes())
    entry["certificate"]["principles"] = []  # a forged certificate under the right name
    altered.write_text(json.dumps(entry))
    again = certificates(opa_bin, library, keys, cache)
    assert again()["data_governance"] == certs["data_governance"] and again.certified == ["data_governance"]

    other = certificates(opa_bin, library, RecordKeys.generate(), cache)  # files signed by a key it does not trust
    assert sorted(other()) == sorted(certs) and len(other.certified) == 7


def test_a_library_policy_that_fails_a_check_is_refused(opa_bin, library, keys, tmp_path):
    broken = tmp_path / "rego"
    shutil.copytree(library, broken)
    policy = broken / "policies" / "operational_policies" / "policy.rego"
    text = policy.read_text()
    assert '"P' in text
    policy.write_text(text.replace('"P', '"X-unknown-P', 1))  # a principle the constitution lacks
    with pytest.raises(CertificationRefused, match="library policy 'operational_policies' is not certified"):
        certificates(opa_bin, broken, keys, tmp_path / "cache")()
