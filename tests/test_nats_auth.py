"""Authenticated, least-privilege NATS against the real nats-server: the generated config refuses
anonymous clients, every role can do what the product does with it (the product's own code runs as
that role), and what a role must not do is refused. nats-py reports a refused publish or subscribe
only through the error callback (JetStream calls then time out), so the tests assert on both."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import stat
import time
import uuid
from types import SimpleNamespace

import msgspec
import nats
import nkeys
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import StreamConfig

from bridge.inference.cache import KVCache
from bridge.inference.client import InferClient
from bridge.inference.connect import (
    NatsCredentialRefused,
    NatsTlsError,
    NatsUnreachable,
    ViolationLog,
    connect,
    connect_options,
)
from bridge.inference.worker import GroqConnection, start_worker, stop_worker
from bridge.kernel.config import NatsSettings
from bridge.kernel.errors import ERROR_CODE_HEADER, ConfigError, Conflict
from controlplane.audit import checkpoints, escalation, trail
from controlplane.audit.escalation import publish_escalation
from controlplane.audit.records import AuditRecord
from controlplane.audit.trail import AuditTrail
from controlplane.dashboard.data import worker_stats
from controlplane.evaluation import nats_service
from controlplane.evaluation.nats_service import EvaluateService
from controlplane.impact import shadow_state, shadow_sync
from controlplane.impact.candidate import CandidateSpec
from controlplane.infra.natsauth import ROLES, Names, NatsAuth, bootstrap, permissions, render
from controlplane.infra.processes import free_port, start_nats
from controlplane.policies import store
from controlplane.policies.schemas import PolicyRecord
from controlplane.policies.store import PolicyStore
from tests.bridge_helpers import Emu, fast_settings
from tests.nats_auth_helpers import (
    PRODUCT_STEPS,
    RECORD_KEYS,
    Key,
    Operator,
    as_role,
    creds_settings,
    issue,
    make_ca,
    start_auth_nats,
)

pytestmark = pytest.mark.slow
FAST = 0.5  # seconds a refused JetStream call or request waits before nats-py gives up


@pytest.fixture(scope="module")
def authed(tmp_path_factory: pytest.TempPathFactory, nats_bin):
    """A nats-server admitting only the generated identities, bootstrapped as `groqpolicy up` would."""
    server, auth = start_auth_nats(tmp_path_factory.mktemp("auth"))
    try:
        asyncio.run(bootstrap(server.extra["url"], auth, PRODUCT_STEPS))
        yield server.extra["url"], auth
    finally:
        server.stop()


@pytest.fixture(scope="module")
def emulator():
    emu = Emu()
    try:
        yield emu
    finally:
        emu.stop()


# -- files and config -----------------------------------------------------------------------------

def test_seeds_are_private_made_once_and_the_config_admits_exactly_them(tmp_path):
    auth = NatsAuth(tmp_path / "auth").ensure()
    assert stat.S_IMODE(os.stat(auth.dir).st_mode) == 0o700
    seeds = {role: auth.seed_file(role).read_text() for role in ROLES}
    for role in ROLES:
        assert stat.S_IMODE(os.stat(auth.seed_file(role)).st_mode) == 0o600
        assert seeds[role].startswith("SU")
    assert stat.S_IMODE(os.stat(auth.config_file).st_mode) == 0o600
    keys = auth.public_keys()
    os.chmod(auth.seed_file("tool"), 0o644)
    NatsAuth(tmp_path / "auth").ensure()  # a second start reuses every seed (and closes an opened one)
    assert {role: auth.seed_file(role).read_text() for role in ROLES} == seeds
    assert stat.S_IMODE(os.stat(auth.seed_file("tool")).st_mode) == 0o600
    config = auth.config_file.read_text()
    assert [config.count(key[0]) for key in keys.values()] == [1] * len(ROLES)
    assert "no_auth_user:" not in config and not any(seed in config for seed in seeds.values())
    auth.seed_file("gateway").write_text("SUdamaged")
    with pytest.raises(ConfigError, match=r"gateway\.nk: not a valid nkey seed"):
        NatsAuth(tmp_path / "auth").ensure()  # never silently replaced: its clients would lose access
    assert auth.seed_file("gateway").read_text() == "SUdamaged"


def test_every_allow_list_is_non_empty_quoted_and_nobody_may_create_or_update_at_run_time():
    table = permissions()
    assert set(table) == set(ROLES)
    for role, perms in table.items():
        assert perms.publish and perms.subscribe, role
        for grant in perms.publish:
            runtime_write = any(verb in grant.subject for verb in ("STREAM.CREATE", "STREAM.UPDATE", "STREAM.DELETE"))
            assert not runtime_write or role == "bootstrap", (role, grant.subject)
        subscribes = [g.subject for g in perms.subscribe]
        assert f"_INBOX.{role}.>" in subscribes and "_INBOX.>" not in subscribes
    rendered = render({"tool": ["UTOOLKEY"]})
    assert '"policy.evaluate"' in rendered and '"_INBOX.tool.>"' in rendered
    assert "$JS" not in rendered.replace('"$JS', "")  # every subject quoted: unquoted $X is a variable


def test_the_names_granted_are_the_products_own():
    names = Names()
    assert (names.policy_bucket, names.artifacts) == (store.BUCKET, store.OBJECTS)
    assert (names.audit_stream, names.audit_prefix, names.escalations) == (trail.STREAM, trail.PREFIX, escalation.SUBJECT)
    assert names.audit_checkpoints == checkpoints.BUCKET
    assert names.shadows == shadow_state.BUCKET
    from controlplane.evaljobs import shared as evaljobs

    assert (names.evaljobs, names.evaljob_results) == (evaljobs.BUCKET, evaljobs.RESULTS)
    from controlplane.impact import store as replay_store

    assert (names.replay_stream, names.replay_subjects) == (replay_store.STREAM, replay_store.SUBJECTS)
    assert (names.evaluate_service, names.evaluate_queue) == (nats_service.SERVICE_NAME, nats_service.QUEUE_GROUP)
    assert names.evaluate == nats_service.EVALUATE_SUBJECT
    from bridge.inference.worker import service as worker_service

    assert (names.worker_service, names.worker_queue) == (worker_service.SERVICE_NAME, worker_service.QUEUE_GROUP)


def test_credential_mixups_are_one_line_configuration_errors(tmp_path):
    auth = NatsAuth(tmp_path / "auth").ensure()
    seed = auth.seed_file("tool")
    url = "nats://127.0.0.1:4222"
    with pytest.raises(ConfigError, match=r"GROQPOLICY_NATS_CREDS=.*holds a bare nkey seed.*set GROQPOLICY_NATS_NKEY") as err:
        connect_options(url, NatsSettings(creds_file=seed), "tool")
    assert seed.read_text() not in str(err.value)
    creds = Operator().user(tmp_path / "tool.creds", "tool", permissions()["tool"])
    with pytest.raises(ConfigError, match=r"GROQPOLICY_NATS_NKEY=.*holds a .creds file.*set GROQPOLICY_NATS_CREDS"):
        connect_options(url, NatsSettings(nkey_file=creds), "tool")
    account_seed = tmp_path / "account.nk"
    account_seed.write_text(Operator().account.seed)
    with pytest.raises(ConfigError, match="holds an account seed"):
        connect_options(url, NatsSettings(nkey_file=account_seed), "tool")
    with pytest.raises(ConfigError, match="no such file"):
        connect_options(url, NatsSettings(nkey_file=tmp_path / "missing.nk"), "tool")
    with pytest.raises(ConfigError, match="set one NATS credential, not several"):
        NatsSettings.from_env({"GROQPOLICY_NATS_NKEY": str(seed), "GROQPOLICY_NATS_USER": "u",
                               "GROQPOLICY_NATS_PASSWORD": "p"})
    with pytest.raises(ConfigError, match="carries user info"):
        connect_options("nats://u:p@127.0.0.1:4222", NatsSettings(), "tool")
    with pytest.raises(ConfigError, match=r"clear text to nats\.example"):
        connect_options("nats://nats.example:4222", NatsSettings(user="u", password="p"), "tool")
    secret = NatsSettings(user="u", password="hunter2-password", nkey_seed="")
    assert "hunter2" not in repr(secret)
    opts = connect_options(url, NatsSettings(nkey_file=seed), "tool")
    assert (opts["nkeys_seed"], opts["inbox_prefix"]) == (str(seed), "_INBOX.tool")


async def test_violations_are_logged_once_per_subject_and_interval(caplog):
    now = [0.0]
    log = ViolationLog(interval_s=60, clock=lambda: now[0])
    denied = nats.errors.Error('nats: permissions violation for publish to "audit.api.allow"')
    with caplog.at_level(logging.WARNING, logger="groqpolicy.nats"):
        for _ in range(50):
            await log(denied)
        await log(nats.errors.Error('nats: permissions violation for subscription to "_inbox.>"'))
        now[0] = 61.0
        await log(denied)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "publish to 'audit.api.allow'" in lines[0] and "more" not in lines[0]
    assert "subscription to '_inbox.>'" in lines[1]
    assert "49 more in the last 60s" in lines[2]


# -- connecting -----------------------------------------------------------------------------------

async def test_anonymous_and_unknown_keys_are_refused_at_once(authed, tmp_path):
    url, _auth = authed
    started = time.monotonic()
    with pytest.raises(NatsCredentialRefused, match=r"refused an anonymous connection.*Authorization Violation"):
        await connect(url, role="tool", settings=NatsSettings(connect_timeout_s=30))
    stranger = NatsAuth(tmp_path / "other").ensure()  # valid seeds the server has never seen
    with pytest.raises(NatsCredentialRefused, match=r"refused the nkey in .*tool\.nk"):
        await connect(url, role="tool", settings=stranger.credential("tool"))
    assert time.monotonic() - started < 2.0  # not the 30 s bound: a refusal is final
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False)  # plain nats-py, no credential: refused too


async def test_an_unreachable_server_fails_within_the_first_connect_bound():
    started = time.monotonic()
    with pytest.raises(NatsUnreachable, match=r"not connected within 0.5s \(ConnectionRefusedError"):
        await connect(f"nats://127.0.0.1:{free_port()}", role="tool", settings=NatsSettings(connect_timeout_s=0.5))
    assert time.monotonic() - started < 2.0


async def test_after_the_first_connect_reconnects_never_give_up(tmp_path, nats_bin):
    server, auth = start_auth_nats(tmp_path)
    port = server.extra["port"]
    nc, _ = await as_role(server.extra["url"], auth, "ops", reconnect_time_wait=0.1)
    try:
        server.stop()
        await asyncio.sleep(0.5)
        assert not nc.is_connected
        server = start_nats(tmp_path / "nats", port=port, extra_args=auth.server_args())
        deadline = time.monotonic() + 10
        while not nc.is_connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert nc.is_connected and not nc.is_closed
    finally:
        await nc.close()
        server.stop()


# -- what each role does, with the product's own code -------------------------------------------------

class ShadowEvents:
    """What the shadows' watch delivers, in order (the shadow mode's side of it, recorded)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    async def defined(self, rule_id, saved) -> None:
        self.events.append(("defined", rule_id, saved))

    def ended(self, rule_id) -> None:
        self.events.append(("ended", rule_id, None))

    def counted(self, rule_id, process, counts) -> None:
        self.events.append(("counted", process, counts))


async def test_the_control_plane_runs_its_store_audit_and_escalations_without_a_violation(authed):
    url, auth = authed
    nc, reports = await as_role(url, auth, "controlplane")
    try:
        policies = PolicyStore(nc.jetstream, keys=RECORD_KEYS)
        await policies.open()
        record = PolicyRecord(rule_id=uuid.uuid4(), name="p", policy_type="security_policies",
                              opa_policy="package x\n", performance_tier="fast")
        revision = await policies.create(record)
        revision = await policies.update(msgspec.structs.replace(record, name="p2"), revision)
        assert (await policies.get(record.rule_id))[0].name == "p2"
        assert len(await policies.history(record.rule_id)) == 2
        await policies.delete(record.rule_id, revision)
        await policies.put_artifact("bundle.tar.gz", b"x" * 300_000)
        assert await policies.get_artifact("bundle.tar.gz") == b"x" * 300_000
        await policies.close()
        audit = AuditTrail(nc, keys=RECORD_KEYS)
        await audit.ensure_stream()  # finds the stream the bootstrap made: reads only
        stored = await audit.append_many([AuditRecord(source="api", decision="allow") for _ in range(3)])
        assert len(stored) == 3 and (await audit.verify()).ok
        assert len((await audit.list_newest(limit=2)).records) == 2
        await audit.close()
        shadows = shadow_state.ShadowBucket(lambda: nc)  # finds the bucket the bootstrap made
        saved = shadow_state.SavedShadow(spec=CandidateSpec(rule_id=record.rule_id, opa_policy="package x\n"),
                                         sample=0.5, started_at=1.0, compared=3)
        seen = ShadowEvents()
        watch = shadow_sync.ShadowWatch(shadows, seen)  # what every control-plane process follows
        await watch.start()
        await shadows.create(record.rule_id, saved)
        with pytest.raises(Conflict):
            await shadows.create(record.rule_id, saved)  # one shadow per policy, whichever process begins it
        assert await shadows.load() == {str(record.rule_id): saved}
        counts = shadow_state.Counts(shadow="s1", compared=4, diverged=1)
        await shadows.save_counts(record.rule_id, "p1", counts)
        await shadows.remove(record.rule_id, ("p1",))
        assert await shadows.load() == {}
        for _ in range(100):
            if len(seen.events) == 4:
                break
            await asyncio.sleep(0.05)
        assert seen.events == [("defined", str(record.rule_id), saved), ("counted", "p1", counts),
                               ("ended", str(record.rule_id), None), ("counted", "p1", None)]
        await watch.stop()
        _event, sent = await publish_escalation(nc, evaluation_id="e1", stage="pre_validation", decision="deny",
                                                violations=[{"principle": "p", "message": "m"}])
        assert sent
        await nc.flush()
        assert reports.violations() == []
    finally:
        await nc.close()


async def test_the_control_plane_shares_evaluation_jobs_in_the_buckets_bootstrap_made_without_a_violation(authed, tmp_path):
    from controlplane.evaljobs.schemas import Job
    from controlplane.evaljobs.shared import SharedJobs

    url, auth = authed
    nc, reports = await as_role(url, auth, "controlplane")
    try:
        jobs = await SharedJobs.open(nc)  # finds the bucket and the results store: no create
        job = Job(id=uuid.uuid4().hex, state="running", via="batch", performance_tier="fast", policy_types=[],
                  contexts=1, created_at=time.time(), heartbeat_at=time.time())
        await jobs.save(job)
        await jobs.save(msgspec.structs.replace(job, done=1))
        await jobs.request_cancel(job.id)
        assert await jobs.cancel_requested(job.id)
        big = b"".join(b'{"line": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(12_000))  # > 1 MiB
        await jobs.write_results(job.id, big)
        await jobs.results(job.id, tmp_path / "results.ndjson")
        assert (tmp_path / "results.ndjson").read_bytes() == big
        assert stat.S_IMODE(os.stat(tmp_path / "results.ndjson").st_mode) == 0o600
        assert [j.id for j in await jobs.listing()] == [job.id] and (await jobs.get(job.id)).done == 1
        await nc.flush()
        assert reports.violations() == []
    finally:
        await nc.close()


async def test_worker_gateway_control_plane_and_ops_do_their_jobs(authed, emulator):
    url, auth = authed
    worker_nc, worker_reports = await as_role(url, auth, "worker")
    gateway_nc, gateway_reports = await as_role(url, auth, "gateway")
    cp_nc, cp_reports = await as_role(url, auth, "controlplane")
    ops_nc, ops_reports = await as_role(url, auth, "ops")
    groq = GroqConnection(client=emulator.client(), emulated=True, base_url=emulator.url)
    worker, _, _ = await start_worker(nc=worker_nc, groq_conn=groq, settings=fast_settings(l1_size=0), l2=True)
    try:
        body = msgspec.json.encode({"question": "Is this request harmful?", "context": {"text": "hello"}})
        status, data, _ = await InferClient(gateway_nc, cache_size=0).request("fast", body)
        assert status == 200 and msgspec.json.decode(data)["decision"] in ("allow", "deny", "review")
        status, data, _ = await InferClient(gateway_nc, cache_size=0).request("fast", body)  # the L2 bucket answers
        assert status == 200 and msgspec.json.decode(data)["cached"] is True
        status, _, _ = await InferClient(cp_nc, cache_size=0).request("nano", body)  # the control plane asks too
        assert status == 200
        assert [row.emulated for row in await worker_stats(cp_nc, wait_s=1.0)] == [True]  # dashboard
        assert worker.engine.l2 is not None and worker.engine.l2.errors == 0
        pong = await ops_nc.request("$SRV.PING.groqpolicy-inference", b"", timeout=2)
        assert msgspec.json.decode(pong.data)["name"] == "groqpolicy-inference"
        for nc in (worker_nc, gateway_nc, cp_nc, ops_nc):
            await nc.flush()
        assert worker_reports.violations() + gateway_reports.violations() + cp_reports.violations() \
            + ops_reports.violations() == []
    finally:
        await stop_worker(worker, groq)
        for nc in (worker_nc, gateway_nc, cp_nc, ops_nc):
            await nc.close()


async def test_a_tool_asks_policy_evaluate_and_can_do_nothing_else(authed):
    url, auth = authed
    cp_nc, cp_reports = await as_role(url, auth, "controlplane")
    tool_nc, tool = await as_role(url, auth, "tool")
    service = EvaluateService(SimpleNamespace(client=cp_nc), pipeline=None)  # type: ignore[arg-type]  # a bad request never reaches the pipeline
    await service.start()
    await cp_nc.flush()  # once in about ten loaded runs the tool's request found no responder without this
    try:
        reply = await tool_nc.request("policy.evaluate", b"not json", timeout=2)
        assert (reply.headers or {}).get(ERROR_CODE_HEADER) == "400"  # the service's answer reached the tool
        assert msgspec.json.decode(reply.data)["error"]["message"].startswith("request: not JSON")
        js = tool_nc.jetstream(timeout=FAST)
        with pytest.raises(NatsTimeout):
            await js.stream_info("GROQPOLICY_AUDIT")  # cannot read the audit stream...
        await tool.wait_for("$js.api.stream.info.groqpolicy_audit")
        await tool_nc.publish("$JS.API.DIRECT.GET.GROQPOLICY_AUDIT", b'{"seq": 1}', reply=tool_nc.new_inbox())
        await tool.wait_for("$js.api.direct.get.groqpolicy_audit")
        await tool_nc.subscribe("audit.>")  # ...nor watch it being written
        await tool.wait_for('subscription to "audit.>"')
        with pytest.raises(NatsTimeout):
            await js.key_value("groqpolicy_policies")  # cannot open the policy bucket...
        await tool_nc.publish(f"$KV.groqpolicy_policies.policy.{uuid.uuid4()}", b"{}")  # ...nor write into it
        await tool.wait_for("$kv.groqpolicy_policies.policy.")
        with pytest.raises(NatsTimeout):
            await tool_nc.request("groq.infer.fast", b"{}", timeout=FAST)  # not a model caller
        await tool.wait_for("groq.infer.fast")
        await tool_nc.subscribe("policy.evaluate", queue="policy-evaluate")  # cannot pose as the service
        await tool.wait_for('subscription to "policy.evaluate" using queue "policy-evaluate"')
        await tool_nc.publish("policy.evaluate.chunk", b"{}")  # nor hand a process a share of a batch
        await tool.wait_for('publish to "policy.evaluate.chunk"')
        with pytest.raises(NatsTimeout):
            await js.key_value("groqpolicy_signin")  # nor read or plant dashboard sign-in codes
        await cp_nc.flush()
        assert cp_reports.violations() == []
    finally:
        await service.stop()
        await tool_nc.close()
        await cp_nc.close()


async def test_a_worker_cannot_write_the_audit_trail_or_create_streams(authed):
    url, auth = authed
    nc, worker = await as_role(url, auth, "worker")
    try:
        await nc.publish("audit.api.allow", b"{}")  # a forged decision record
        await worker.wait_for('publish to "audit.api.allow"')
        with pytest.raises(NatsTimeout):
            await nc.jetstream(timeout=FAST).publish("audit.api.allow", b"{}")
        squat = StreamConfig(name="KV_groq_judgments_2", subjects=["audit.>"])
        with pytest.raises(NatsTimeout):
            await nc.jetstream(timeout=FAST).add_stream(squat)  # a stream over the audit subjects
        await worker.wait_for("$js.api.stream.create.kv_groq_judgments_2")
        await nc.publish("policy.escalations", b"{}")
        await worker.wait_for('publish to "policy.escalations"')
        await nc.subscribe("groq.infer.*")  # outside its queue group it could read every request
        await worker.wait_for('subscription to "groq.infer.*"')
        kv = await KVCache.open(nc.jetstream(timeout=FAST))  # what it may: the judgments bucket
        assert kv.kv is not None
    finally:
        await nc.close()


async def test_the_gateway_can_only_ask_for_judgments(authed):
    url, auth = authed
    nc, gateway = await as_role(url, auth, "gateway")
    try:
        with pytest.raises(NatsTimeout):
            await nc.request("policy.evaluate", b"{}", timeout=FAST)
        await gateway.wait_for('publish to "policy.evaluate"')
        await nc.publish("$SRV.PING", b"")
        await gateway.wait_for('publish to "$srv.ping"')
        with pytest.raises(NatsTimeout):
            await KVCache.open(nc.jetstream(timeout=FAST))
        await gateway.wait_for("$js.api.stream.info.kv_groq_judgments")
        await nc.subscribe("groq.infer.*", queue="groq-infer")  # cannot serve (and so answer) judgments
        await gateway.wait_for('subscription to "groq.infer.*" using queue "groq-infer"')
    finally:
        await nc.close()


async def test_the_control_plane_cannot_cut_the_audit_stream_or_touch_the_judgments(authed):
    url, auth = authed
    nc, cp = await as_role(url, auth, "controlplane")
    try:
        js = nc.jetstream(timeout=FAST)
        shrunk = dataclasses.replace(AuditTrail(nc, keys=RECORD_KEYS).stream_config(), max_msgs=1)
        with pytest.raises(NatsTimeout):
            await js.update_stream(shrunk)
        await cp.wait_for("$js.api.stream.update.groqpolicy_audit")
        with pytest.raises(NatsTimeout):
            await js.delete_stream("GROQPOLICY_AUDIT")
        await cp.wait_for("$js.api.stream.delete.groqpolicy_audit")
        with pytest.raises(NatsTimeout):
            await js.key_value("groq_judgments")
        await cp.wait_for("$js.api.stream.info.kv_groq_judgments")
    finally:
        await nc.close()


async def test_nobody_reads_another_roles_replies(authed, emulator):
    url, auth = authed
    worker_nc, worker_reports = await as_role(url, auth, "worker")
    gateway_nc, _ = await as_role(url, auth, "gateway")
    snoopers = [await as_role(url, auth, role) for role in ("tool", "controlplane", "ops")]
    groq = GroqConnection(client=emulator.client(), emulated=True, base_url=emulator.url)
    worker, _, _ = await start_worker(nc=worker_nc, groq_conn=groq, settings=fast_settings(), l2=False)
    seen: list[bytes] = []

    async def keep(msg) -> None:
        seen.append(msg.data)

    try:
        for nc, reports in snoopers:
            for subject in ("_INBOX.>", "_INBOX.gateway.>"):
                await nc.subscribe(subject, cb=keep)
                await reports.wait_for(f'subscription to "{subject.lower()}"')
        body = msgspec.json.encode({"question": "Is this request harmful?", "context": {"text": "snoop"}})
        status, _, _ = await InferClient(gateway_nc, cache_size=0).request("fast", body)
        assert status == 200
        for nc, _ in snoopers:
            await nc.flush()
        assert seen == []
        await worker_nc.publish("_INBOX.gateway.forged", b"{}")  # nor answer where it was not asked
        await worker_reports.wait_for('publish to "_inbox.gateway.forged"')
    finally:
        await stop_worker(worker, groq)
        for nc, _ in [(worker_nc, None), (gateway_nc, None), *snoopers]:
            await nc.close()


# -- rotation -------------------------------------------------------------------------------------

async def test_rotation_overlaps_then_retires_the_old_key(tmp_path, nats_bin):
    server, auth = start_auth_nats(tmp_path)
    url = server.extra["url"]
    try:
        old_seed = auth.seed_file("tool").read_text()
        old_nc, _ = await as_role(url, auth, "tool")
        auth.rotate("tool")
        server.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        old = NatsSettings(nkey_seed=old_seed, connect_timeout_s=2)
        again = await connect(url, role="tool", settings=old)  # the overlap: both keys are admitted
        new_nc, _ = await as_role(url, auth, "tool")
        assert again.is_connected and new_nc.is_connected and old_nc.is_connected
        await again.close()
        with pytest.raises(ConfigError, match="rotation is still open"):
            auth.rotate("tool")
        auth.retire("tool")
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while old_nc.is_connected and time.monotonic() < deadline:  # the live connection is dropped
            await asyncio.sleep(0.05)
        assert not old_nc.is_connected and new_nc.is_connected
        with pytest.raises(NatsCredentialRefused):
            await connect(url, role="tool", settings=old)
        await old_nc.close()
        await new_nc.close()
    finally:
        server.stop()


# -- a cluster someone else runs: TLS with user + password, and .creds files --------------------------

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, nats_bin):
    root = tmp_path_factory.mktemp("tls")
    ca = make_ca(root, "ca")
    cert, key = issue(root, "server", ca, dns="nats.groqpolicy.test", server=True)
    password = "correct horse battery staple"
    tool = permissions()["tool"]
    conf = root / "tls.conf"
    conf.write_text(
        f'tls {{ cert_file: "{cert}", key_file: "{key}" }}\n'
        'accounts { GROQPOLICY { users: [ { user: "tool", password: "' + password + '", permissions: { '
        f'publish: {{ allow: ["{tool.publish[0].subject}"] }}, subscribe: {{ allow: ["{tool.subscribe[0].subject}"] }} }} }} ] }} }}\n')
    server = start_nats(root / "nats", extra_args=["-c", str(conf)])
    try:
        yield server.extra["url"], ca, (cert, key), password, root
    finally:
        server.stop()


async def test_tls_with_a_private_ca_user_and_password_and_client_certificates(tls_server, authed):
    url, ca, (cert, key), password, root = tls_server
    ca_file = ca[2]
    good = NatsSettings(user="tool", password=password, tls_ca=ca_file, tls_hostname="nats.groqpolicy.test",
                        connect_timeout_s=30)
    nc = await connect(url, role="tool", settings=good)
    assert nc.is_connected
    await nc.close()
    started = time.monotonic()
    with pytest.raises(NatsCredentialRefused, match="refused user 'tool': Authorization Violation") as err:
        await connect(url, role="tool", settings=msgspec.structs.replace(good, password="not-the-password"))
    assert "not-the-password" not in str(err.value)
    other_ca = make_ca(root, "other-ca")[2]
    with pytest.raises(NatsTlsError, match="certificate does not verify"):
        await connect(url, role="tool", settings=msgspec.structs.replace(good, tls_ca=other_ca))
    with pytest.raises(NatsTlsError, match="certificate does not verify"):  # the URL's IP is not in the certificate
        await connect(url, role="tool", settings=msgspec.structs.replace(good, tls_hostname=""))
    assert time.monotonic() - started < 15.0  # refused at its first answer, not retried to the 30 s timeout
    client_cert, client_key = issue(root, "client", ca, dns="worker", server=False)
    mutual = root / "mutual.conf"  # a server that verifies its clients' certificates
    mutual.write_text(f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{ca_file}", verify: true }}\n')
    server = start_nats(root / "mutual", extra_args=["-c", str(mutual)])
    try:
        with_cert = NatsSettings(tls_ca=ca_file, tls_cert=client_cert, tls_key=client_key,
                                 tls_hostname="nats.groqpolicy.test", connect_timeout_s=30)
        nc = await connect(server.extra["url"], role="worker", settings=with_cert)
        assert nc.is_connected
        await nc.close()
        started = time.monotonic()
        with pytest.raises(NatsTlsError, match="refused this client's certificate"):
            await connect(server.extra["url"], role="worker",
                          settings=msgspec.structs.replace(with_cert, tls_cert=None, tls_key=None))
        assert time.monotonic() - started < 15.0  # refused at its first answer, not retried to the 30 s timeout
    finally:
        server.stop()
    plain_url, _ = authed  # a server without TLS (or a man in the middle) never gets the password
    with pytest.raises(NatsTlsError, match="did not start TLS; the password was not sent"):
        await connect(plain_url, role="tool", settings=good)


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory, nats_bin):
    root = tmp_path_factory.mktemp("jwt")
    operator = Operator()
    conf = root / "operator.conf"
    conf.write_text(operator.server_config())
    server = start_nats(root / "nats", extra_args=["-c", str(conf)])
    creds = {role: operator.user(root / f"{role}.creds", role, perms) for role, perms in permissions().items()}
    try:
        yield server.extra["url"], creds, operator, root
    finally:
        server.stop()


async def test_creds_files_carry_the_same_permissions_as_user_jwts(jwt_server):
    url, creds, operator, root = jwt_server
    boot = await connect(url, role="bootstrap", settings=creds_settings(creds["bootstrap"]))
    for step in PRODUCT_STEPS:
        await step(boot)
    await boot.close()
    cp_nc = await connect(url, role="controlplane", settings=creds_settings(creds["controlplane"]))
    tool_reports: list[str] = []

    async def keep(exc: Exception) -> None:
        tool_reports.append(str(exc).lower())

    tool_nc = await connect(url, role="tool", settings=creds_settings(creds["tool"]), error_cb=keep)
    service = EvaluateService(SimpleNamespace(client=cp_nc), pipeline=None)  # type: ignore[arg-type]
    await service.start()
    await cp_nc.flush()
    try:
        reply = await tool_nc.request("policy.evaluate", b"not json", timeout=2)
        assert (reply.headers or {}).get(ERROR_CODE_HEADER) == "400"
        with pytest.raises(NatsTimeout):
            await tool_nc.jetstream(timeout=FAST).stream_info("GROQPOLICY_AUDIT")
        assert any("permissions violation" in e and "groqpolicy_audit" in e for e in tool_reports)
        forged = operator.user(root / "forged.creds", "tool", permissions()["tool"], signer=Key(nkeys.PREFIX_BYTE_ACCOUNT))
        with pytest.raises(NatsCredentialRefused, match="refused the creds file"):
            await connect(url, role="tool", settings=creds_settings(forged))  # signed by an unknown account
    finally:
        await service.stop()
        await tool_nc.close()
        await cp_nc.close()
