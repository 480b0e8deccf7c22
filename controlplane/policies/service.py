"""Policy writes and reads: validate (hash, compile), store in JetStream, republish the bundle.

Every write is serialized per replica (one asyncio lock) and goes compile -> store -> activate, so
Rego that does not compile is never stored, and the bundle never lags behind this replica's writes.
Other replicas see the write through their KV watch and `reconcile` to the same set of policies.

Started with the app: `start` opens the store (its first view of the KV bucket) and, when stored
policies are active, makes the active bundle match them; `on_published` is then called whenever a
new revision is active (the evaluator follows it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec

from bridge.kernel.errors import Conflict, GroqPolicyError, NotFound
from bridge.kernel.vocabulary import check_hash
from controlplane.bundles.artifacts import Built, CompiledBundle
from controlplane.bundles.definitions import BundleDefinition
from controlplane.certification.certifier import CertificationRequest, Certified, Certifier
from controlplane.certification.checks import SubjectDoesNotCompile
from controlplane.certification.library import LibraryCertificates
from controlplane.policies import rego
from controlplane.policies.bundler import PolicyBundler, measure
from controlplane.policies.schemas import (
    CompileReport,
    PolicyCreate,
    PolicyCreated,
    PolicyRecord,
    PolicyUpdate,
)
from controlplane.policies.store import PolicyStore

log = logging.getLogger(__name__)


class PolicyNotFound(NotFound):
    pass


class PolicyInactive(Conflict):
    pass


def bundle_artifact(revision: str, target: str) -> str:
    """Object-store name of a revision's signed archive."""
    return f"bundles/{revision}/{target}.tar.gz"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _module(record: PolicyRecord) -> str:
    return rego.bundle_module(record.rule_id, record.opa_policy, title=record.name,
                              policy_type=record.policy_type, tier=record.performance_tier)


class _Build:
    """A compile running in a thread (`PolicyBundler.prepare`) and the certificates of the others."""

    def __init__(self, task: asyncio.Future[Built], certificates: dict[str, Any]) -> None:
        self.task, self.certificates = task, certificates

    async def done(self) -> tuple[Built, dict[str, Any]]:
        return await self.task, dict(self.certificates)

    async def settled(self) -> None:
        await asyncio.wait([self.task])
        if not self.task.cancelled():
            self.task.exception()  # retrieved: it is the write's error that is raised, not this one


class PolicyService:
    def __init__(self, store: PolicyStore, bundler: PolicyBundler, on_published: Callable[[], object],
                 certifier: Certifier | None = None) -> None:
        self.store, self.bundler = store, bundler
        self.certifier = certifier  # None: writes are stored without a certificate (tools, never the app)
        self.on_published = on_published  # called (in a thread) after a new revision is active
        self.lock = asyncio.Lock()
        self._modules: dict[tuple[uuid.UUID, int], str] = {}
        self.reconcile_errors: list[str] = []
        self.start_errors: list[str] = []
        self._active: list[PolicyRecord] = []
        self._active_of: list[PolicyRecord] | None = None  # the store's records list `_active` was taken from
        store.on_change = self._on_change  # another replica's write, seen through the KV watch

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.open()
        if self.active_records():
            try:
                await self.reconcile()
            except GroqPolicyError as exc:  # the previous revision keeps serving; reported by /health
                self.start_errors.append(f"stored policies: {exc}")

    async def stop(self) -> None:
        await self.store.close()

    @property
    def errors(self) -> list[str]:
        """What keeps the stored policies from being served as stored: start-up failures, and every
        value the store refused (unsigned, forged, unknown key, replayed: controlplane.policies.store)."""
        return self.start_errors + list(self.store.refused.values())

    async def _on_change(self) -> None:
        try:
            await self.reconcile()
        except GroqPolicyError:
            pass  # recorded in reconcile_errors; the previous revision keeps serving

    def publish_library(self, definitions: Sequence[BundleDefinition], force: bool = False) -> list[str]:
        """Compile and activate the bundle definitions whose sources changed; the stored policies
        ship inside the library bundle (controlplane.policies.bundler). Blocking: run in a thread."""
        return self.bundler.publish_definitions(definitions, self.active_modules(), force=force,
                                                certificates=self.active_certificates())

    # -- the active set ------------------------------------------------------------------------
    def module_of(self, record: PolicyRecord) -> str:
        key = (record.rule_id, record.version)
        text = self._modules.get(key)
        if text is None:
            text = self._modules[key] = _module(record)
        return text

    def active_modules(self, *, with_: PolicyRecord | None = None, without: uuid.UUID | None = None) -> dict[str, str]:
        records = {r.rule_id: r for r in self.store.records()}
        if with_ is not None:
            records[with_.rule_id] = with_
        if without is not None:
            records.pop(without, None)
        return {str(rid): self.module_of(r) for rid, r in records.items() if r.is_active}

    def active_certificates(self, *, with_: PolicyRecord | None = None, without: uuid.UUID | None = None) -> dict[str, Any]:
        """{rule_id: certificate} of the active set (what the bundle's `.manifest` carries)."""
        records = {r.rule_id: r for r in self.store.records()}
        if with_ is not None:
            records[with_.rule_id] = with_
        if without is not None:
            records.pop(without, None)
        return {str(rid): msgspec.to_builtins(r.certificate) for rid, r in records.items()
                if r.is_active and r.certificate is not None}

    def active_records(self) -> list[PolicyRecord]:
        """The active records; the same list object until the store's records change (do not modify it)."""
        records = self.store.records()
        if self._active_of is not records:
            self._active = [r for r in records if r.is_active]
            self._active_of = records
        return self._active

    async def _compile(self, modules: dict[str, str], focus: uuid.UUID | None,
                       certificates: dict[str, Any] | None = None) -> CompiledBundle:
        return await anyio.to_thread.run_sync(lambda: self.bundler.compile(
            modules, focus=str(focus) if focus else None, certificates=certificates))

    async def _activate(self, compiled: CompiledBundle) -> str:
        return await self._published(await anyio.to_thread.run_sync(self.bundler.publish, compiled))

    async def record_library_certifications(self) -> None:
        """The library certifications that bundle builds ran since the last call (a start, or library
        files changed on disk), on the audit trail as a stored policy's certification is. A trail that
        cannot take them is logged: the certificates themselves are in the bundle's manifest."""
        library = self.bundler.library_certificates
        if self.certifier is None or self.certifier.record is None or not isinstance(library, LibraryCertificates):
            return
        for outcome, cert in library.take_fresh():
            try:
                await self.certifier.record(outcome, cert)
            except GroqPolicyError as exc:
                log.error("library policy %s: its certification (%s) is not on the audit trail: %s",
                          cert.policy_name, outcome, exc)

    async def _published(self, revision: str) -> str:
        """After a write: the evaluator follows `revision` (the active one), its archives are kept."""
        await self.record_library_certifications()
        await anyio.to_thread.run_sync(self.on_published)
        # the signed archives of the revision a write produced, kept next to the policies (the
        # replicas build their own, signed with their own key; these are the record of what was served)
        for target in ("rego", "wasm"):
            archive = self.bundler.active_archive(revision, target)
            if archive is not None:
                await self.store.put_artifact(bundle_artifact(revision, target), archive)
        return revision

    async def reconcile(self, force: bool = False) -> str:
        """Make the active bundle match the stored active policies (after a watch update, at start)."""
        async with self.lock:
            modules, certificates = self.active_modules(), self.active_certificates()
            try:
                revision, published = await anyio.to_thread.run_sync(
                    lambda: self.bundler.ensure(modules, force=force, certificates=certificates))
            except GroqPolicyError as exc:
                self.reconcile_errors.append(str(exc))
                log.error("policies: cannot build the bundle for the stored policies: %s", exc)
                raise
            finally:
                await self.record_library_certifications()
            if published:
                await anyio.to_thread.run_sync(self.on_published)
            return revision

    # -- writes ---------------------------------------------------------------------------------
    async def create(self, body: PolicyCreate, actor: str = "") -> PolicyCreated:
        check_hash(body.constitutional_hash)
        rule_id = uuid.uuid4()
        now = _now()
        record = PolicyRecord(
            rule_id=rule_id, name=body.name, policy_type=body.policy_type, opa_policy=body.opa_policy,
            performance_tier=body.performance_tier, groq_model_config=body.groq_model_config,
            constitutional_principles=list(body.constitutional_principles), priority=body.priority,
            is_active=body.is_active, version=1, created_at=now, updated_at=now,
            package=rego.package_for(rule_id), entrypoint=rego.decision_path(rule_id),
            wasm_compilation_status="success", source_sha256=hashlib.sha256(body.opa_policy.encode()).hexdigest(),
            opa_tests=body.opa_tests,
        )
        async with self.lock:
            record, certified, built = await self._certified(record, body.certification, None, actor)
            revision = await self._write(record, last=None, certified=certified, built=built)
        return PolicyCreated(rule_id=rule_id, wasm_compilation_status="success", version=1,
                             entrypoint=record.entrypoint, bundle_revision=revision)

    async def update(self, rule_id: uuid.UUID, body: PolicyUpdate, actor: str = "") -> PolicyRecord:
        check_hash(body.constitutional_hash)
        async with self.lock:
            current, last = await self._get(rule_id)
            changes = {f: getattr(body, f) for f in body.__struct_fields__
                       if f not in ("constitutional_hash", "certification") and getattr(body, f) is not msgspec.UNSET}
            record = msgspec.structs.replace(current, **changes, version=current.version + 1, updated_at=_now())
            if "opa_policy" in changes:
                record = msgspec.structs.replace(record, source_sha256=hashlib.sha256(record.opa_policy.encode()).hexdigest(),
                                                 wasm_compilation_status="success", bytecode_size=0)
            request = body.certification if isinstance(body.certification, CertificationRequest) else None
            record, certified, built = await self._certified(record, request, current, actor)
            await self._write(record, last=last, current=current, certified=certified, built=built)
            return record

    async def delete(self, rule_id: uuid.UUID) -> PolicyRecord:
        async with self.lock:
            current, last = await self._get(rule_id)
            modules = self.active_modules(without=rule_id)
            # fails (422) if another policy depends on it
            compiled = await self._compile(modules, None, self.active_certificates(without=rule_id))
            await self.store.delete(rule_id, last=last)
            await self._activate(compiled)
            return current

    async def _write(self, record: PolicyRecord, last: int | None, current: PolicyRecord | None = None,
                     certified: Certified | None = None, built: _Build | None = None) -> str:
        """compile -> (audit the certificate) -> store -> activate. `current` is the stored version a
        write replaces; `built` the compile of an active record, started beside its certification."""
        if record.is_active:  # one compile: the set with it both checks its Rego and is what is served
            if built is None:
                built = self._build(record)
            prepared, certificates = await built.done()
            if record.certificate is not None:
                certificates[str(record.rule_id)] = msgspec.to_builtins(record.certificate)
            compiled = await anyio.to_thread.run_sync(self.bundler.finish, prepared, certificates)
            await self._record_issued(certified)
            await self._store(record, last)
            return await self._activate(compiled)
        remaining = await self._check_inactive(record, current)
        await self._record_issued(certified)
        await self._store(record, last)
        if remaining is None:  # the set without it is the active revision already
            return await self._published(await anyio.to_thread.run_sync(self.bundler.active_revision))
        return await self._activate(remaining)

    async def _check_inactive(self, record: PolicyRecord, current: PolicyRecord | None) -> CompiledBundle | None:
        """An inactive record is never served, but bad Rego is never stored either: its module is
        compiled with the active set, unless that module is in the active revision already (it was
        active and is only being switched off). What gets served is the set without it: compiled
        (and returned) only when that is not the active revision already, which is when the record
        was active until now. So a write compiles once, except one that switches a policy off and
        changes its module at the same time: those are two different bundles."""
        served_already = current is not None and current.is_active and self.module_of(current) == self.module_of(record)
        if not served_already:
            await self._compile(self.active_modules(with_=msgspec.structs.replace(record, is_active=True)), record.rule_id)
        remaining, certificates = self.active_modules(without=record.rule_id), self.active_certificates(without=record.rule_id)
        if await anyio.to_thread.run_sync(self.bundler.is_active, remaining, certificates):
            return None
        return await self._compile(remaining, None, certificates)  # fails (422) if another active policy depends on it

    def _build(self, record: PolicyRecord, parsed: tuple[str, dict[str, Any]] | None = None) -> _Build:
        """The compile of the active set with `record`, started now in a thread; the other policies'
        certificates are taken at the same moment as their modules."""
        modules, certificates = self.active_modules(with_=record), self.active_certificates(without=record.rule_id)
        return _Build(asyncio.ensure_future(anyio.to_thread.run_sync(
            lambda: self.bundler.prepare(modules, focus=str(record.rule_id), parsed=parsed))), certificates)

    async def _certified(self, record: PolicyRecord, request: CertificationRequest | None, current: PolicyRecord | None,
                         actor: str) -> tuple[PolicyRecord, Certified | None, _Build | None]:
        """The record with the certificate of this revision (controlplane.certification), or the refusal.
        The user's own mistakes (parse errors, reserved names: one `opa parse` of the text) come
        first; then an active record's compile runs beside the checks (both are `opa` processes over
        the same text; the certificate only goes into the manifest afterwards), and a refusal still
        wins over a compile error, as when they ran one after the other. Rego that does not compile
        is reported by the compiler, with its messages, as any write's."""
        if self.certifier is None:
            return record, None, None
        module = self.module_of(record)
        parsed = await anyio.to_thread.run_sync(self.bundler.check_user_text, module)
        built = self._build(record, parsed) if record.is_active else None
        try:
            certified = await self.certifier.certify(
                rule_id=str(record.rule_id), version=record.version, name=record.name, text=record.opa_policy,
                module=module, tests=record.opa_tests, principles=record.constitutional_principles,
                request=request, previous=current.certificate if current is not None else None, actor=actor)
        except SubjectDoesNotCompile:
            if built is not None:
                await built.done()
            else:
                await self._compile(self.active_modules(with_=msgspec.structs.replace(record, is_active=True)), record.rule_id)
            raise
        except BaseException:
            if built is not None:
                await built.settled()  # never a compile left running past the write's lock
            raise
        return msgspec.structs.replace(record, certificate=certified.certificate), certified, built

    async def _record_issued(self, certified: Certified | None) -> None:
        if certified is not None and self.certifier is not None:
            await self.certifier.record_issued(certified)

    async def _store(self, record: PolicyRecord, last: int | None) -> None:
        if last is None:
            await self.store.create(record)
        else:
            await self.store.update(record, last=last)

    # -- reads ------------------------------------------------------------------------------------
    async def _get(self, rule_id: uuid.UUID) -> tuple[PolicyRecord, int]:
        found = await self.store.get(rule_id)
        if found is None:
            raise PolicyNotFound(f"policy {rule_id}: not found")
        return found

    async def get(self, rule_id: uuid.UUID) -> PolicyRecord:
        return (await self._get(rule_id))[0]

    async def history(self, rule_id: uuid.UUID) -> list[PolicyRecord]:
        """Every stored version of a policy, oldest first (PolicyNotFound when it has none now)."""
        await self._get(rule_id)
        return await self.store.history(rule_id)

    def list(self, policy_type: str | None = None, performance_tier: str | None = None, is_active: bool | None = None) -> list[PolicyRecord]:
        out = [r for r in self.store.records()
               if (policy_type is None or r.policy_type == policy_type)
               and (performance_tier is None or r.performance_tier == performance_tier)
               and (is_active is None or r.is_active == is_active)]
        return sorted(out, key=lambda r: (-r.priority, r.created_at, str(r.rule_id)))

    # -- compile ------------------------------------------------------------------------------------
    async def compile(self, rule_id: uuid.UUID, input: Any = None, samples: int = 200) -> CompileReport:
        """Standalone compile of one policy (library + it), measured by evaluating the module."""
        record, _ = await self._get(rule_id)
        entry = rego.wasm_entrypoint(rule_id)
        modules = {str(rule_id): self.module_of(record)}
        compiled = await self._compile(modules, rule_id)
        median, p99, size = await anyio.to_thread.run_sync(lambda: measure(compiled, entry, {} if input is None else input, samples))
        artifact = await anyio.to_thread.run_sync(self.bundler.artifact, compiled)
        name = f"policies/{rule_id}/v{record.version}/wasm.tar.gz"
        await self.store.put_artifact(name, artifact)
        async with self.lock:
            fresh = await self.store.get(rule_id)
            if fresh is not None and fresh[0].version == record.version:
                await self.store.update(msgspec.structs.replace(fresh[0], wasm_compilation_status="success", bytecode_size=size), last=fresh[1])
        return CompileReport(rule_id=rule_id, compilation_status="success", bytecode_size=size, performance_estimate=median,
                             performance_samples=samples, performance_p99_us=p99, entrypoint=entry,
                             version=record.version, artifact=name)
