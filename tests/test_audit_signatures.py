"""Signed audit records and signed checkpoints against a real nats-server.

The attacker here holds what an identity with access to the stream holds, and nothing more: it reads
the chain's tail with nats-py, links a record to it correctly and publishes it (conditioned on the
last sequence, exactly as the trail does), but it has no record key of the control plane."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
import sys
import time

import httpx
import msgspec
import nats
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH
from controlplane.audit import AuditRecord, AuditTrail
from controlplane.audit.checkpoints import BUCKET, DOMAIN, Checkpoint
from controlplane.audit.records import BatchSignature, seal
from controlplane.audit.signing import signer
from controlplane.audit.stream import STREAM
from controlplane.infra.recordkeys import RecordKeys
from tests.conftest import REPO_ROOT
from tests.controlplane_helpers import ADMIN_HEADERS, ADMIN_TOKEN, make_settings, running_control_plane

KEYS = RecordKeys.generate()  # the control plane's record key


def rec(i: int | str = 0, decision: str = "allow") -> AuditRecord:
    return AuditRecord(source="api", decision=decision, evaluation_id=f"e{i}")


@pytest.fixture
async def nc(nats_server):
    conn = await nats.connect(nats_server.extra["url"])
    yield conn
    await conn.close()


@pytest.fixture
async def trail(nc, tmp_path):
    t = AuditTrail(nc, keys=KEYS, checkpoint_file=tmp_path / "state" / "audit-checkpoint.json")
    await t.ensure_stream()
    yield t
    await t.close()


async def attacker_append(nc, how: str) -> int:
    """Append one record linked to the chain's tail with the stream access alone; its sequence."""
    js = nc.jetstream()
    tail = await js.get_last_msg(STREAM, "audit.>")
    seq = tail.seq + 1
    sign = None
    if how == "forged":  # the control plane's key id, but no way to make its signature
        sig = base64.urlsafe_b64encode(os.urandom(64)).rstrip(b"=").decode()
        sign = lambda _: BatchSignature(kid=KEYS.kid, first_seq=seq, sig=sig)  # noqa: E731
    elif how == "unknown key":  # a well-formed signature by a key of its own
        sign = signer(RecordKeys.generate(), STREAM, seq, seq)
    _, data = seal(AuditRecord(source="api", decision="allow", evaluation_id="forged"),
                   msgspec.json.decode(tail.data)["hash"], sign)
    ack = await js.publish("audit.api.allow", data, headers={"Nats-Expected-Last-Sequence": str(tail.seq)})
    assert ack.seq == seq
    return seq


async def test_each_commit_is_signed_once_over_its_range(trail):
    trail.atomic_from = 1  # five records as one atomic batch (a short queue goes out record by record)
    stored = await trail.append_many([rec(i) for i in range(5)])
    assert [s.record.signature is None for s in stored] == [True] * 4 + [False]
    sig = stored[-1].record.signature
    assert sig is not None and (sig.kid, sig.first_seq) == (KEYS.kid, 1)
    single = await trail.append(rec("single"))
    assert single.record.signature is not None and single.record.signature.first_seq == single.seq == 6
    raw = msgspec.json.decode(await trail.store.message(1))
    assert "signature" not in raw  # a record without one stores none
    report = await trail.verify()
    assert (report.ok, report.checked, report.problem, report.signers) == (True, 6, "", {KEYS.kid: 6})


@pytest.mark.parametrize("how", ["unsigned", "forged", "unknown key"])
async def test_a_record_appended_without_the_key_is_named(trail, nc, how):
    for i in range(3):
        await trail.append(rec(i))
    seq = await attacker_append(nc, how)
    after = await trail.append(rec("after"))  # the trail links to the attacker's record, but does not vouch for it
    assert after.record.signature is not None and after.record.signature.first_seq == seq + 1
    report = await trail.verify()
    assert (report.ok, report.first_bad_seq, report.problem, report.bad, report.checked) == (False, seq, how, 1, 5)
    if how == "unsigned":
        assert report.reason == f"signature: none covers this record (the next one, at seq {seq + 1}, signs {seq + 1}..{seq + 1})"
    elif how == "forged":
        assert report.reason == f"signature: the one at seq {seq} (key {KEYS.kid}, records {seq}..{seq}) does not verify"
    else:
        assert report.reason.startswith(f"signature: the one at seq {seq} (records {seq}..{seq}) is by key rk-")
        assert report.reason.endswith(", which is not trusted")


async def test_an_unsigned_record_at_the_tail_is_named(trail, nc):
    await trail.append(rec(0))
    seq = await attacker_append(nc, "unsigned")
    report = await trail.verify()
    assert (report.first_bad_seq, report.problem) == (seq, "unsigned")
    assert report.reason == f"signature: none covers this record (none follows it up to seq {seq})"


async def test_an_unsigned_record_in_the_middle_is_named(trail, nc):
    await trail.append_many([rec(i) for i in range(3)])
    seq = await attacker_append(nc, "unsigned")
    await trail.append_many([rec(f"b{i}") for i in range(2)])
    await trail.append(rec("c"))
    report = await trail.verify()
    assert (report.ok, report.first_bad_seq, report.problem, report.bad, report.checked) == (False, 4, "unsigned", 1, 7)
    assert seq == 4 and report.signers == {KEYS.kid: 6}


async def test_rotation_keeps_old_records_verifiable(nc):
    old_private, new_private = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    old = RecordKeys(old_private)
    rotated = RecordKeys(new_private, [old_private.public_key()])  # the retired key stays trusted
    before = AuditTrail(nc, keys=old)
    await before.ensure_stream()
    await before.append_many([rec(i) for i in range(3)])
    after = AuditTrail(nc, keys=rotated)
    stored = await after.append_many([rec(f"n{i}") for i in range(2)])
    assert stored[-1].record.signature is not None and stored[-1].record.signature.kid == rotated.kid != old.kid
    report = await after.verify()
    assert (report.ok, report.checked, report.signers) == (True, 5, {old.kid: 3, rotated.kid: 2})
    distrusting = AuditTrail(nc, keys=RecordKeys(new_private))  # the old key dropped from the trusted set
    report = await distrusting.verify()
    assert (report.ok, report.first_bad_seq, report.problem, report.bad) == (False, 1, "unknown key", 3)
    for t in (before, after, distrusting):
        await t.close()


async def _recreate_with(nc, trail: AuditTrail, messages: list[tuple[str, bytes]]) -> None:
    """What someone with stream administration can do: delete the stream (its records cannot be
    deleted one by one), create it again, and put back a prefix of the old records, byte for byte."""
    js = nc.jetstream()
    await js.delete_stream(STREAM)
    await trail.ensure_stream()
    for subject, data in messages:
        await js.publish(subject, data)


async def test_a_cut_tail_is_detected_against_the_last_checkpoint(trail, nc, tmp_path):
    for i in range(5):
        await trail.append(rec(i))
    cp = await trail.checkpoints.take()
    assert cp is not None and (cp.seq, cp.kid, cp.stream) == (5, KEYS.kid, STREAM)
    path = tmp_path / "state" / "audit-checkpoint.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert msgspec.json.decode(path.read_bytes(), type=Checkpoint) == cp
    assert await trail.checkpoints.take() is None  # the head has not moved
    assert (await trail.verify()).ok
    kept = [(m.subject, m.data) for m in [await nc.jetstream().get_msg(STREAM, s) for s in (1, 2, 3)]]

    await _recreate_with(nc, trail, kept)
    report = await trail.verify()  # every record present verifies, signatures included: only the length is wrong
    assert (report.ok, report.first_bad_seq, report.problem, report.checked, report.bad) == (False, 4, "truncated", 3, 1)
    assert report.checkpoint == cp
    assert report.reason.startswith("checkpoint: the stream ends at seq 3, but checkpoint seq 5 (hash ")
    assert report.reason.endswith(": records 4..5 are gone")
    assert await trail.checkpoints.take() is None  # a checkpoint never blesses the cut stream

    # another replica, without the local file, finds the checkpoint in the bucket
    other = AuditTrail(nc, keys=KEYS)
    assert (await other.verify()).problem == "truncated"
    # and with the bucket deleted as well, the local file still holds it
    await nc.jetstream().delete_key_value(BUCKET)
    fresh = AuditTrail(nc, keys=KEYS, checkpoint_file=path)
    assert (await fresh.verify()).checkpoint == cp
    for t in (other, fresh):
        await t.close()


async def test_a_cut_through_a_commit_is_truncation_not_forgery(trail, nc):
    trail.atomic_from = 1
    await trail.append_many([rec(i) for i in range(5)])  # one atomic batch: its signature is on seq 5
    cp = await trail.checkpoints.take()
    assert cp is not None and cp.seq == 5
    kept = [(m.subject, m.data) for m in [await nc.jetstream().get_msg(STREAM, s) for s in (1, 2, 3)]]
    await _recreate_with(nc, trail, kept)
    report = await trail.verify()
    assert (report.ok, report.first_bad_seq, report.problem, report.bad) == (False, 1, "truncated", 4)
    assert report.reason.startswith("checkpoint: the signature of this record's commit is gone with the cut tail: "
                                    "the stream ends at seq 3, but checkpoint seq 5 (")


async def test_a_stream_cut_and_written_again_is_detected(trail, nc):
    for i in range(3):
        await trail.append(rec(i))
    cp = await trail.checkpoints.take()
    assert cp is not None and cp.seq == 3
    await _recreate_with(nc, trail, [])
    for i in range(4):  # the control plane goes on appending, signing, to the new stream
        await trail.append(rec(f"new{i}"))
    report = await trail.verify()
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 3, "truncated")
    assert report.reason.endswith(f"is not the one {cp.describe()} saw: the stream was cut and rewritten")


async def test_a_checkpoint_without_a_trusted_signature_is_ignored(trail, nc):
    await trail.append(rec(0))
    liar = RecordKeys.generate()
    fake = Checkpoint(stream=STREAM, seq=999, hash="0" * 64, time="2026-12-01T00:00:00.000000Z", kid=liar.kid)
    fake = msgspec.structs.replace(fake, sig=liar.sign(DOMAIN, fake.payload()))
    kv = await nc.jetstream().key_value(BUCKET)  # made with the stream
    await kv.put(f"head.{liar.kid}", msgspec.json.encode(fake))
    copied = msgspec.structs.replace(fake, kid=KEYS.kid)  # the right key id does not help without the key
    await kv.put(f"head.{KEYS.kid}", msgspec.json.encode(copied))
    report = await trail.verify()
    assert (report.ok, report.checkpoint) == (True, None)


# ---- through the control plane: the HTTP API and `groqpolicy audit verify` -------------------

def audit_verify_cli(base_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane.ops.cli", "audit", "verify", "--url", base_url,
                           "--token", ADMIN_TOKEN], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def evaluate(client: httpx.Client, principal: str) -> None:
    r = client.post("/api/v1/evaluate", json={"input_context": {"principal": principal},
                                              "constitutional_hash": CONSTITUTIONAL_HASH})
    assert r.status_code == 200, r.text


def test_the_api_and_the_cli_name_a_record_appended_without_the_key(tmp_path, nats_server):
    url = nats_server.extra["url"]
    settings = make_settings(tmp_path / "state", nats_url=url)
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        evaluate(client, "alice")
        assert client.get("/api/v1/audit").json()["records"]  # in JetStream now (reads wait for the spool)
        r = audit_verify_cli(settings.base_url)
        kid = services.audit.writer.keys.kid
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"audit chain intact: 1 records verified (hashes, links, signatures); signed by {kid} (1); ")

        async def forge() -> int:
            conn = await nats.connect(url)
            try:
                return await attacker_append(conn, "unsigned")
            finally:
                await conn.close()

        seq = asyncio.run(forge())
        evaluate(client, "bob")  # the control plane keeps appending after it
        report = client.get("/api/v1/audit/verify").json()
        assert (report["ok"], report["first_bad_seq"], report["problem"], report["bad"], report["checked"]) == (
            False, seq, "unsigned", 1, 3)
        r = audit_verify_cli(settings.base_url)
        assert r.returncode == 1
        lines = r.stderr.splitlines()
        assert lines[0] == f"audit chain BROKEN at seq {seq}: unsigned: {report['reason']}"
        assert lines[1].startswith("1 bad record(s) among 3; ")


def test_the_control_plane_takes_checkpoints_and_reports_a_cut_tail(tmp_path, nats_server):
    url = nats_server.extra["url"]
    # `ack`: each sequential evaluation is a commit of its own, so the cut below falls between commits
    settings = make_settings(tmp_path / "state", nats_url=url, audit_checkpoint_s=0.1, audit_durability="ack")
    checkpoint_file = tmp_path / "state" / "audit-checkpoint.json"
    with running_control_plane(settings) as services, \
            httpx.Client(base_url=settings.base_url, headers=ADMIN_HEADERS, timeout=30) as client:
        for i in range(4):
            evaluate(client, f"p{i}")
        deadline = time.monotonic() + 20
        while not (checkpoint_file.exists() and msgspec.json.decode(checkpoint_file.read_bytes())["seq"] == 4):
            assert time.monotonic() < deadline, "no checkpoint of seq 4 taken"
            time.sleep(0.05)
        assert stat.S_IMODE(checkpoint_file.stat().st_mode) == 0o600
        report = client.get("/api/v1/audit/verify").json()
        assert report["ok"] and report["checkpoint"]["seq"] == 4
        assert "length checked against checkpoint seq 4 (" in audit_verify_cli(settings.base_url).stdout

        async def cut() -> None:
            conn = await nats.connect(url)
            try:
                js = conn.jetstream()
                kept = [await js.get_msg(STREAM, s) for s in (1, 2)]
                await js.delete_stream(STREAM)
                await js.add_stream(services.audit.stream_config())
                for m in kept:
                    await js.publish(m.subject, m.data)
            finally:
                await conn.close()

        asyncio.run(cut())
        report = client.get("/api/v1/audit/verify").json()
        assert (report["ok"], report["first_bad_seq"], report["problem"]) == (False, 3, "truncated")
        assert report["checkpoint"]["seq"] == 4 and report["reason"].endswith("records 3..4 are gone")
        r = audit_verify_cli(settings.base_url)
        assert r.returncode == 1 and r.stderr.startswith("audit chain BROKEN at seq 3: truncated: checkpoint: the stream ends at seq 2")
        time.sleep(0.3)  # checkpoint rounds run meanwhile: none may bless the cut stream
        assert msgspec.json.decode(checkpoint_file.read_bytes())["seq"] == 4
