"""Signed checkpoints of the audit stream's head, kept outside the stream, so a cut tail shows.

Signatures show that every record present was written by the control plane; they cannot show that
records are missing from the end (deleted, or the stream deleted and recreated with a prefix of its
old records). So at an interval (`GROQPOLICY_AUDIT_CHECKPOINT_S`), and once more at stop, the control
plane signs the stream's head as a checkpoint: {stream, seq, hash, time, kid}, Ed25519 with the
record key over `groqpolicy-audit-checkpoint-v1` + its canonical JSON. `verify` compares the stream
with the newest checkpoint it can trust and reports `truncated` when the stream ends before the
checkpoint's sequence, or holds another record there.

Where checkpoints go, and why two places:
- `<state>/audit-checkpoint.json` (0600), rewritten atomically: outside NATS altogether, so an
  identity that controls the stream (and could delete the checkpoint bucket too) cannot roll it back;
- the KV bucket `groqpolicy_audit_checkpoints`, key `head.<kid>`: every replica's verify sees the
  newest checkpoint any replica took, and a replica with a fresh state dir still has one.
A checkpoint whose signature does not verify is ignored (and logged): whoever can write the bucket
cannot make verify fail, or pass, with a checkpoint of their own.

A checkpoint only moves forward: when the stream's head is behind the last checkpoint, or the record
at the checkpoint's sequence is not the one it saw, no new checkpoint is taken (it would bless the
cut stream) and the truncation is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path

import msgspec
import nats.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bridge.kernel.errors import GroqPolicyError
from controlplane.audit.records import inspect_stored, now_rfc3339
from controlplane.audit.stream import AuditStream, Rejected
from controlplane.infra.recordkeys import RecordKeys

log = logging.getLogger(__name__)

BUCKET = "groqpolicy_audit_checkpoints"
DOMAIN = "groqpolicy-audit-checkpoint-v1"
LOCAL_FILE = "audit-checkpoint.json"
# what one checkpoint round may run into; none of it may stop the next round
_FAILURES = (GroqPolicyError, TimeoutError, nats.errors.Error, OSError, Rejected)


class Checkpoint(msgspec.Struct, kw_only=True, frozen=True):
    """The stream's head as the control plane saw it, signed."""

    stream: str
    seq: int
    hash: str
    time: str  # RFC 3339 UTC
    kid: str
    sig: str = ""

    def payload(self) -> dict[str, object]:
        return {"stream": self.stream, "seq": self.seq, "hash": self.hash, "time": self.time, "kid": self.kid}

    def describe(self) -> str:
        return f"checkpoint seq {self.seq} (hash {self.hash[:16]}…, {self.time}, key {self.kid})"


_decode = msgspec.json.Decoder(Checkpoint).decode


def _decoded(value: bytes | None) -> Checkpoint | None:
    """A checkpoint from the bucket; None for what is not one (whoever can write the bucket can put anything)."""
    try:
        return _decode(value) if value else None
    except msgspec.DecodeError:
        return None


class Checkpoints:
    def __init__(self, store: AuditStream, keys: RecordKeys, path: Path | None = None, *,
                 bucket: str = BUCKET) -> None:
        self.store = store
        self.keys = keys
        self.path = path  # the local copy; None: the bucket only
        self.bucket = bucket
        self.last: Checkpoint | None = None  # the newest this process took or found
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._reported: tuple[int, int] | None = None  # (checkpoint seq, head seq) of the truncation last logged

    # -- taking them ---------------------------------------------------------------------------

    async def take(self) -> Checkpoint | None:
        """Sign the stream's head and export it; None when the head has not moved (or went back)."""
        previous = self.last or await self.newest()
        seq, head = await self.store.tail()
        if seq == 0:
            return None
        if previous is not None:
            if (seq, head) == (previous.seq, previous.hash):
                return None
            if not await self._still_holds(previous, seq):
                return None
        cp = Checkpoint(stream=self.store.name, seq=seq, hash=head, time=now_rfc3339(), kid=self.keys.kid)
        cp = msgspec.structs.replace(cp, sig=self.keys.sign(DOMAIN, cp.payload()))
        if self.path is not None:
            _write_private(self.path, msgspec.json.encode(cp))
        self.last = cp
        await self._export(cp)
        return cp

    async def _still_holds(self, previous: Checkpoint, seq: int) -> bool:
        """Whether the stream still reaches `previous` with the record it saw (logged when not)."""
        held = ""
        if seq >= previous.seq:
            try:
                held, _, _ = inspect_stored(await self.store.message(previous.seq), None)
            except Rejected:
                held = ""
            if not held and previous.seq < (await self.store.state()).first_seq:
                # dropped by the stream's retention limits (oldest first), not cut: the head moved on
                # past it, which is all that can still be checked
                return True
        if held != previous.hash:
            if self._reported != (previous.seq, seq):  # once per state, not at every interval
                log.error("audit trail: the stream (head seq %d) no longer holds %s: truncated; no new checkpoint "
                          "taken", seq, previous.describe())
                self._reported = (previous.seq, seq)
            return False
        return True

    async def _export(self, cp: Checkpoint) -> None:
        """Put the checkpoint in the bucket unless a newer one is there (replicas share the key)."""
        kv = await self._bucket(create=True)
        key = f"head.{cp.kid}"
        for _ in range(3):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                try:
                    await kv.create(key, msgspec.json.encode(cp))
                    return
                except KeyWrongLastSequenceError:
                    continue
            current = _decoded(entry.value)
            if current is not None and current.seq >= cp.seq:
                return
            try:
                await kv.update(key, msgspec.json.encode(cp), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue

    async def _bucket(self, create: bool) -> KeyValue:
        if self._kv is None:
            js = self.store.nc.jetstream(timeout=self.store.timeout)
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                if not create:
                    raise
                self._kv = await js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=8, replicas=self.store.replicas, storage=StorageType.FILE,
                    description="groqpolicy: signed checkpoints of the audit stream's head"))
        return self._kv

    # -- reading them --------------------------------------------------------------------------

    async def newest(self) -> Checkpoint | None:
        """The newest checkpoint of this stream (highest sequence) among the local file and the bucket
        whose signature verifies with a trusted key; the others are logged and ignored."""
        found = [c for c in (self._local(), *await self._exported()) if c is not None]
        trusted = [c for c in found if c.stream == self.store.name and self._trusted(c)]
        newest = max(trusted, key=lambda c: c.seq, default=None)
        if newest is not None and (self.last is None or newest.seq > self.last.seq):
            self.last = newest
        return newest

    def _trusted(self, cp: Checkpoint) -> bool:
        problem = self.keys.check(DOMAIN, cp.payload(), cp.kid, cp.sig)
        if problem:
            log.warning("audit trail: ignoring %s: %s", cp.describe(), problem)
        return not problem

    def _local(self) -> Checkpoint | None:
        if self.path is None:
            return None
        try:
            return _decode(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("audit trail: checkpoint file %s unreadable: %s", self.path, exc)
            return None

    async def _exported(self) -> list[Checkpoint | None]:
        """The bucket's checkpoints under the trusted key ids (no other key's could be trusted)."""
        out: list[Checkpoint | None] = []
        try:
            kv = await self._bucket(create=False)
            for kid in sorted(self.keys.trusted):
                try:
                    out.append(_decoded((await kv.get(f"head.{kid}")).value))
                except KeyNotFoundError:
                    continue
        except BucketNotFoundError:
            return []
        except (TimeoutError, nats.errors.Error) as exc:  # the file still counts; the bucket is a convenience
            log.warning("audit trail: checkpoint bucket unreadable: %r", exc)
        return out

    async def ensure(self) -> None:
        """Create the bucket where it is missing (at start, beside the stream)."""
        await self._bucket(create=True)

    # -- the interval --------------------------------------------------------------------------

    def start(self, interval_s: float) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._every(interval_s), name="audit-checkpoints")

    async def _every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.take()
            except _FAILURES as exc:
                log.warning("audit trail: checkpoint not taken: %r", exc)

    def cancel(self) -> None:
        """Stop the interval, without a last checkpoint (a stop whose time ran out)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        """Stop the interval and take a last checkpoint (the writer has drained by now)."""
        task = self._task
        if task is None:
            return
        self.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not self.store.nc.is_connected:  # a take would only wait out its timeout, and hold up the stop
            log.warning("audit trail: last checkpoint not taken: NATS is not connected (the last one taken stands)")
            return
        try:
            await self.take()
        except _FAILURES as exc:
            log.warning("audit trail: last checkpoint not taken: %r", exc)


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
