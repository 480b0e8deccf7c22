"""The audit spool: a local write-ahead log for records that JetStream has not acknowledged yet.

With `GROQPOLICY_AUDIT_DURABILITY=spool` (the default) a decision is answered once its record is
written here, and the trail's writer links and publishes it in the background. A record that is
in the spool survives the control plane's crash or restart: at start the unacknowledged ones are
appended again, in their order (their record ids make JetStream drop a copy it stored in the last
two minutes, and the trail skips one it finds at the stream's tail).

Durability class: a spool write reaches the operating system's page cache, like a JetStream
acknowledgement from a single file-backed server (JetStream syncs to disk every two minutes by
default). It does not replicate: a cluster that must hold the record on a quorum before the
decision is served runs with `GROQPOLICY_AUDIT_DURABILITY=ack`.

Layout (in `<state_dir>/audit-spool/`): segments `<generation>.log` of JSON lines (one unsealed
record each) and `acked`, "<generation> <byte offset>" of the first record not acknowledged yet (fixed
width, rewritten in place). A segment is retired once every record in it is acknowledged and it has grown
past `SEGMENT_BYTES`: writes move to the next generation, the cursor moves there, the old file goes.
Unreadable lines found at recovery go to `quarantine` (see `recover`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from pathlib import Path

import msgspec

from controlplane.audit.errors import SpoolError
from controlplane.audit.records import AuditRecord

log = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024
CURSOR_BYTES = 34  # "<12-digit generation> <20-digit offset>\n"
_SEGMENT = re.compile(r"^(\d{12})\.log$")
_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(AuditRecord)


class AuditSpool:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"audit spool: cannot create {directory}: {exc.strerror or exc}") from exc
        self._cursor_path = directory / "acked"
        self._quarantine = directory / "quarantine"  # unreadable records found at recovery
        self._cursor_fd = -1
        self._fd = -1
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:  # one writer per spool: two control planes on one state directory would tear it
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise SpoolError(f"audit spool: {directory} is in use by another control plane process "
                             "(give each replica its own GROQPOLICY_STATE_DIR)") from exc
        try:
            self.acked_gen, self.acked_offset = self._read_cursor()
            self.gen = max([self.acked_gen, *self._generations()])
            self._open(self.gen)
        except BaseException:
            self.close()
            raise
        # the records written (or recovered) and not acknowledged yet, oldest first: each one's
        # generation, byte length and when it was written (monotonic; a recovered one: when recovered)
        self._unacked: list[tuple[int, int, float]] = []

    # -- files -----------------------------------------------------------------------------

    def _segment(self, gen: int) -> Path:
        return self.directory / f"{gen:012d}.log"

    def _generations(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT.match(p.name)))

    def _open(self, gen: int) -> None:
        try:  # the new segment first: when it cannot be opened (a full disk) the current one stays usable
            fd = os.open(self._segment(gen), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise SpoolError(f"audit spool: cannot open {self._segment(gen)}: {exc.strerror or exc}") from exc
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.gen = gen
        self.size = os.fstat(self._fd).st_size

    def _read_cursor(self) -> tuple[int, int]:
        try:
            text = self._cursor_path.read_text()
        except FileNotFoundError:
            return 0, 0
        except OSError as exc:
            raise SpoolError(f"audit spool: cannot read {self._cursor_path}: {exc.strerror or exc}") from exc
        parts = text.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            # what was acknowledged is unknown: every spooled record goes again (the trail recognises the
            # ones it holds) rather than one being dropped; the damaged cursor is kept for a look
            aside = self._cursor_path.with_name("acked.quarantine")
            log.warning("audit spool: %s is damaged (%r; expected '<generation> <offset>'); moved to %s, "
                        "re-sending every spooled record", self._cursor_path, text[:40], aside.name)
            try:
                os.replace(self._cursor_path, aside)
            except OSError as exc:
                raise SpoolError(f"audit spool: {self._cursor_path} is damaged and cannot be moved aside: "
                                 f"{exc.strerror or exc}") from exc
            return min(self._generations(), default=0), 0
        return int(parts[0]), int(parts[1])

    def _write_cursor(self, gen: int, offset: int) -> None:
        # fixed width, rewritten in place: one small write within one page per acknowledgement
        if self._cursor_fd < 0:
            self._cursor_fd = os.open(self._cursor_path, os.O_RDWR | os.O_CREAT, 0o600)
            os.ftruncate(self._cursor_fd, CURSOR_BYTES)
        os.pwrite(self._cursor_fd, f"{gen:012d} {offset:020d}\n".encode(), 0)
        self.acked_gen, self.acked_offset = gen, offset

    # -- the write-ahead path ----------------------------------------------------------------

    def write(self, records: list[AuditRecord]) -> None:
        """Append records (one write call); raises SpoolError when the bytes did not all go down."""
        self.write_encoded([_encode(r) for r in records])

    def write_encoded(self, encoded: list[bytes]) -> None:
        """`write` for records already encoded as JSON (one per item, no newline)."""
        lines = [e + b"\n" for e in encoded]
        data = b"".join(lines)
        try:
            n = os.write(self._fd, data)
        except OSError as exc:
            raise SpoolError(f"audit spool: write to {self._segment(self.gen)} failed: {exc.strerror or exc}") from exc
        if n != len(data):  # a short write (disk full): cut it off so the log stays line-aligned
            try:
                os.ftruncate(self._fd, self.size)
            except OSError:
                pass
            raise SpoolError(f"audit spool: short write to {self._segment(self.gen)} ({n} of {len(data)} bytes)")
        self.size += n
        now = time.monotonic()
        self._unacked.extend((self.gen, len(line), now) for line in lines)

    def acknowledge(self, count: int) -> None:
        """The oldest `count` unacknowledged records are in JetStream: move the cursor past them."""
        if count <= 0:
            return
        done, self._unacked = self._unacked[:count], self._unacked[count:]
        gen, offset = self.acked_gen, self.acked_offset
        for g, n, _ in done:
            if g != gen:
                gen, offset = g, 0
            offset += n
        if self._unacked:
            if self._unacked[0][0] != gen:  # the rest is in a newer segment
                gen, offset = self._unacked[0][0], 0
        elif self.gen == gen and self.size >= self.segment_bytes:
            # all acknowledged and the segment is big: continue in a fresh one
            self._open(gen + 1)
            gen, offset = self.gen, 0
        retire = gen != self.acked_gen
        self._write_cursor(gen, offset)
        if retire:
            self._retire_before(gen)

    def _retire_before(self, gen: int) -> None:
        """Delete the segments older than `gen` (called when the cursor moves to a newer segment)."""
        for g in self._generations():
            if g < gen:
                try:
                    self._segment(g).unlink()
                except OSError:
                    pass

    @property
    def backlog(self) -> int:
        return len(self._unacked)

    def oldest_wait_s(self) -> float:
        """How long the oldest record not acknowledged yet has waited (0 when none waits)."""
        return time.monotonic() - self._unacked[0][2] if self._unacked else 0.0

    # -- recovery ----------------------------------------------------------------------------

    def recover(self) -> list[AuditRecord]:
        """Records written but not acknowledged before the last stop, oldest first.

        A line that cannot be read (a torn tail left by a crash mid-write, damaged bytes) must not
        stop the start, and must not vanish unseen: it is appended to `quarantine` beside the
        segments, logged, and cut out of its segment, so the records after it are appended and the
        cursor's byte arithmetic stays exact."""
        out: list[AuditRecord] = []
        self._unacked = []
        for gen in self._generations():
            if gen < self.acked_gen:
                continue
            path = self._segment(gen)
            if not path.is_file():  # a device or a directory where a segment should be: nothing to read back
                log.warning("audit spool: %s is not a regular file; nothing recovered from it", path)
                continue
            data = path.read_bytes()
            pos = self.acked_offset if gen == self.acked_gen else 0
            if pos > len(data):  # the segment was cut below the cursor: nothing after it is left
                log.warning("audit spool: cursor %d %d is past the end of %s (%d bytes); resuming at its end",
                            self.acked_gen, self.acked_offset, path, len(data))
                self._write_cursor(gen, len(data))
                pos = len(data)
            kept, bad = self._read_segment(path, data, pos, out)
            if bad:
                self._set_aside(gen, data[:pos] + b"".join(kept), bad)
            now = time.monotonic()
            self._unacked.extend((gen, len(line), now) for line in kept)
        return out

    def _read_segment(self, path: Path, data: bytes, pos: int, out: list[AuditRecord]) -> tuple[list[bytes], list[bytes]]:
        """The readable lines from `pos` (their records appended to `out`) and the unreadable ones."""
        kept: list[bytes] = []
        bad: list[bytes] = []
        while pos < len(data):
            end = data.find(b"\n", pos)
            line = data[pos:] if end < 0 else data[pos:end + 1]
            try:
                if end < 0:
                    raise msgspec.DecodeError("torn last line (no newline)")
                out.append(_decoder.decode(line))
                kept.append(line)
            except msgspec.DecodeError as exc:
                log.warning("audit spool: %s byte %d: unreadable record moved to %s (%s): %r", path, pos,
                            self._quarantine, exc, line[:120])
                bad.append(line.rstrip(b"\n"))
            pos = len(data) if end < 0 else end + 1
        return kept, bad

    def _set_aside(self, gen: int, keep: bytes, bad: list[bytes]) -> None:
        """Append unreadable lines to the quarantine file, then rewrite their segment without them."""
        try:
            with open(self._quarantine, "ab") as fh:
                fh.write(b"".join(line + b"\n" for line in bad))
                fh.flush()
                os.fsync(fh.fileno())
            tmp = self._segment(gen).with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(keep)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._segment(gen))
        except OSError as exc:
            raise SpoolError(f"audit spool: cannot set unreadable records aside: {exc.strerror or exc}") from exc
        if gen == self.gen:
            self._open(gen)  # the open descriptor still points at the replaced file

    def close(self) -> None:
        for name in ("_fd", "_cursor_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
