"""Certificates of the library's own policies (`rego/policies/<type>/`), kept by content.

Every policy an agent runs carries its certificate in the bundle's `.manifest` (`library_certificates`
beside the stored policies' `certificates`). Certifying the seven library policies costs two `opa`
runs each (~1.5 s in all on a loaded machine), so a certificate is kept under the digest of what
decided it: the policy's directory (its text and its tests), the library it imports (`lib/`), the
constitution (`constitution/`, `groqpolicy/` data) and the certifier itself (`certify.rego`,
`CERTIFICATE_VERSION`). A start, or a write, certifies only a policy whose digest is new.

Kept where a restart finds it: `<state>/library-certificates/<type>-<digest>.json`, the certificate and
the digest signed together with the record key (its own domain), so a file planted there, or the
certificate of an older constitution renamed to a newer digest, does not verify and is certified
again. A library certificate has no `issued_at`: it is a function of its content and the shared
record key, so every replica produces the same bytes and the same bundle revision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from controlplane.certification.certificate import CERTIFICATE_VERSION, PolicyCertificate, digest, sign, verify
from controlplane.certification.certifier import CertificationRefused, Outcome
from controlplane.certification.checks import CERTIFY_REGO, PolicyChecks, Subject
from controlplane.infra.recordkeys import RecordKeys

log = logging.getLogger(__name__)

DOMAIN = "groqpolicy-library-certificate-v1"
POLICIES = "policies"  # under a library source root: one directory per library policy
# what every library policy is checked against, besides its own directory (paths under the root)
SHARED = ("lib", "constitution", "groqpolicy")
WORKERS = 3  # two `opa` processes per policy: a few at once, not seven, on a small machine


class _Entry(msgspec.Struct):
    content: str
    certificate: dict[str, Any]
    kid: str
    sig: str


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []


class LibraryCertificates:
    """{policy type: signed certificate} of the library's policies, certified once per content."""

    def __init__(self, checks: PolicyChecks, keys: RecordKeys, roots: Callable[[], Sequence[Path]],
                 cache_dir: Path | None) -> None:
        self.checks, self.keys, self._roots, self.cache_dir = checks, keys, roots, cache_dir
        self._known: dict[str, dict[str, Any]] = {}  # digest -> certificate (this process)
        self._lock = threading.Lock()
        self.certified: list[str] = []  # the policy types certified anew by this process (not from a cache)
        # every certification run by this process (not read from the cache), certified or refused, until
        # the audit trail has them (take_fresh): a library policy's certificate is on the trail as a
        # stored policy's is
        self._fresh: list[tuple[Outcome, PolicyCertificate]] = []

    def policies(self) -> dict[str, Path]:
        """{type: its directory} of every library policy."""
        found: dict[str, Path] = {}
        for root in self._roots():
            for policy in sorted((root / POLICIES).glob("*/policy.rego")):
                found.setdefault(policy.parent.name, policy.parent)
        return found

    def content_digest(self, directory: Path) -> str:
        """The digest of everything that decides a library policy's certificate."""
        h = hashlib.sha256(f"certificate-v{CERTIFICATE_VERSION}\0".encode() + CERTIFY_REGO.read_bytes() + b"\0")
        for root in self._roots():
            for path in [directory, *(root / s for s in SHARED)]:
                for f in _files(path):
                    if f.is_relative_to(root):
                        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        return h.hexdigest()

    def __call__(self) -> dict[str, dict[str, Any]]:
        """Every library policy's certificate; CertificationRefused when one of them fails a check
        (fail closed: the library is not published with a policy that is not certified)."""
        policies = self.policies()
        wanted = {kind: self.content_digest(d) for kind, d in policies.items()}
        with self._lock:
            missing = [k for k, key in wanted.items() if key not in self._known and not self._load(k, key)]
            if missing:
                with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="certify-library") as pool:
                    for kind, cert in zip(missing, pool.map(lambda k: self._certify(k, policies[k]), missing), strict=True):
                        self._known[wanted[kind]] = cert
                        self._store(kind, wanted[kind], cert)
            return {kind: self._known[key] for kind, key in sorted(wanted.items())}

    def _certify(self, kind: str, directory: Path) -> dict[str, Any]:
        report = self.checks.run(Subject(kind=POLICIES, name=kind))
        text = (directory / "policy.rego").read_text()
        tests = "".join(f.read_text() for f in sorted(directory.glob("*_test.rego")))
        cert = sign(PolicyCertificate(
            rule_id=f"library/{kind}", policy_version=0, policy_name=kind, policy_sha256=digest(text),
            tests_sha256=digest(tests) if tests else "",
            principles=sorted(str(p.get("id", "")) for p in report.principles), checks=report.checks,
            certified=report.passed), self.keys)
        self._fresh.append(("certified" if report.passed else "refused", cert))  # list.append: thread safe
        if not report.passed:
            problems = [f"{c.name}: {p}" for c in report.checks for p in c.problems]
            raise CertificationRefused(f"library policy {kind!r} is not certified, so the library is not published: "
                                       f"{'; '.join(problems)}", details={"certificate": msgspec.to_builtins(cert)})
        self.certified.append(kind)
        return dict(msgspec.to_builtins(cert))

    def take_fresh(self) -> list[tuple[Outcome, PolicyCertificate]]:
        """The certifications run since the last call (oldest first), for the audit trail."""
        taken = []
        while self._fresh:  # pop, not swap: a certifying thread may append meanwhile
            taken.append(self._fresh.pop(0))
        return taken

    def _path(self, kind: str, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{kind}-{key}.json"

    def _load(self, kind: str, key: str) -> bool:
        path = self._path(kind, key)
        if path is None or not path.is_file():
            return False
        try:
            entry = msgspec.json.decode(path.read_bytes(), type=_Entry)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            entry = None
        if entry is None or entry.content != key or entry.kid != self.keys.kid \
                or self.keys.check(DOMAIN, {"content": key, "certificate": entry.certificate}, entry.kid, entry.sig) \
                or verify(entry.certificate, self.keys):
            log.warning("%s: not a certificate this control plane signed for this content; certifying again", path)
            return False
        self._known[key] = entry.certificate
        return True

    def _store(self, kind: str, key: str, cert: dict[str, Any]) -> None:
        path = self._path(kind, key)
        if path is None:
            return
        entry = _Entry(content=key, certificate=cert, kid=self.keys.kid,
                       sig=self.keys.sign(DOMAIN, {"content": key, "certificate": cert}))
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            for old in path.parent.glob(f"{kind}-*.json"):  # the previous content's: never wanted again
                old.unlink(missing_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(msgspec.json.encode(entry))
            tmp.replace(path)
        except OSError as exc:  # a cache that cannot be written costs the next start a certification
            log.warning("%s: cannot keep the library certificate: %s", path, exc)
