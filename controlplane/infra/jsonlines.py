"""Local JSON-lines state files (decision logs, agent status): replay that heals, appends that never
lie, and a size that stays bounded.

- **Replay** reads every line through the caller's decoder. A line it cannot read (a torn tail left
  by a crash mid-write, a record an older version wrote in a shape it no longer accepts, bytes from
  elsewhere) is moved to `<file>.quarantine`, logged once, and the file is rewritten without it:
  no record can stop a start, and none is thrown away unseen.
- **Append** writes and fsyncs before the caller answers 2xx. When the disk is full or the state
  directory cannot be written, it raises `StateUnavailable` (503, the client retries) after cutting
  off whatever part of the write did land, so the file never holds a half line that was refused.
- **Rotation**: once a file would grow past `max_bytes` it moves to `<file>.1` (`.1` to `.2`, and
  so on; the oldest beyond `keep` goes) and a fresh file starts. A caller that keeps a compact view
  instead (agent status) rewrites the file with `rewrite`.
- **Age** (`max_age_s`, 0: none): a rotated file whose newest line (its mtime: rotation keeps it)
  is older than that is removed, and the live file also rotates once it has been written for a
  `1/(keep+1)` share of the age, so the live file plus `keep` rotated ones span the whole age and a
  quiet file does not hold old lines for ever. The live file is never removed under the writer: one
  that holds only expired lines is rotated first, then removed as a rotated one. Checked at start
  and on appends (at most once a second), so no line is kept much past `max_age_s * (1 + 1/(keep+1))`
  and none younger than `max_age_s` is removed by age.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from bridge.kernel.errors import Unavailable
from controlplane.infra.private import open_private

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 3  # rotated generations kept beside the live file
_QUARANTINE_PREVIEW = 120  # bytes of a bad line quoted in the log


class StateUnavailable(Unavailable):
    """A local state file cannot be written (disk full, read-only or missing state directory):
    nothing was stored, so the request is refused with 503 and may be retried."""


class JsonLinesFile:
    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP,
                 max_age_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.max_age_s = max_age_s
        self._clock = clock
        self._born = clock()  # when the live file's first line was written (at most); unknown at start: now
        self._expiry_checked = float("-inf")
        self.expired = 0  # rotated files removed by age
        self.quarantine_path = path.with_name(path.name + ".quarantine")
        self.quarantined = 0  # lines moved aside by the last replay
        self._lock = threading.Lock()

    # -- replay --------------------------------------------------------------------------------

    def replay(self, decode: Callable[[bytes], T]) -> list[T]:
        """Every readable record in file order; unreadable lines go to the quarantine file."""
        if self.path.exists() and not self.path.is_file():  # a device or a directory: nothing to replay
            log.warning("%s: not a regular file; starting without it", self.path)
            return []
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:  # an unreadable file must not stop a start either: set it aside whole
            log.warning("%s: cannot read (%s); starting without it", self.path, exc.strerror or exc)
            return []
        out: list[T] = []
        good: list[bytes] = []
        bad: list[tuple[int, bytes, str]] = []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if number == len(lines):  # no newline after it: the process died while writing it
                bad.append((number, line, "torn last line (no newline)"))
                continue
            try:
                out.append(decode(line))
            except Exception as exc:  # noqa: BLE001 - whatever the decoder refuses, the start goes on
                bad.append((number, line, str(exc) or type(exc).__name__))
                continue
            good.append(line)
        if bad:
            self._set_aside(bad, good)
        return out

    def _set_aside(self, bad: list[tuple[int, bytes, str]], good: list[bytes]) -> None:
        for number, line, reason in bad:
            log.warning("%s line %d: unreadable record moved to %s (%s): %r", self.path, number,
                        self.quarantine_path.name, reason, line[:_QUARANTINE_PREVIEW])
        try:
            with open_private(self.quarantine_path, "ab") as fh:
                fh.write(b"".join(line + b"\n" for _, line, _ in bad))
                fh.flush()
                os.fsync(fh.fileno())
            self.rewrite(good)
        except OSError as exc:  # read-only state: serve what was read; the next start tries again
            log.warning("%s: could not set %d unreadable line(s) aside (%s)", self.path, len(bad), exc.strerror or exc)
        self.quarantined = len(bad)

    # -- writing -------------------------------------------------------------------------------

    def append(self, lines: list[bytes]) -> None:
        """Append one line per item (no newline inside), durably; StateUnavailable if not stored."""
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._expire()
                self._rotate_if_full(len(data))
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.fchmod(fd, 0o600)  # a file an older version left wider is narrowed too
            except OSError as exc:
                raise self._unavailable("cannot open", exc) from exc
            try:
                start = os.fstat(fd).st_size
                if start == 0:
                    self._born = self._clock()
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(28, f"short write ({written} of {len(data)} bytes)")
                    os.fsync(fd)
                except OSError as exc:
                    _cut(fd, start)
                    raise self._unavailable("cannot write", exc) from exc
            finally:
                os.close(fd)

    def rewrite(self, lines: Iterable[bytes]) -> None:
        """Replace the whole file atomically (a compacted view, or the lines a replay kept)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open_private(tmp, "wb") as fh:  # decision inputs, agent statuses: the owner's alone
                fh.write(b"".join(line + b"\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def expire(self) -> None:
        """Remove what is past `max_age_s` now (also called from appends, at most once a second)."""
        with self._lock:
            self._expiry_checked = float("-inf")
            self._expire()

    def _expire(self) -> None:
        now = self._clock()
        if self.max_age_s <= 0 or now - self._expiry_checked < 1.0:
            return
        self._expiry_checked = now
        oldest_kept = now - self.max_age_s
        try:
            live = self.path.stat() if self.path.is_file() else None
            if live is not None and live.st_size > 0 and (
                    live.st_mtime < oldest_kept or now - self._born > self.max_age_s / (self.keep + 1)):
                self._rotate()  # only expired lines, or written long enough: the next file starts now
            for n in range(1, self.keep + 1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.is_file() and older.stat().st_mtime < oldest_kept:
                    older.unlink()
                    self.expired += 1
                    log.info("%s: removed, its newest line is older than %.0f s", older.name, self.max_age_s)
        except FileNotFoundError:  # removed meanwhile by hand: nothing left to expire
            pass

    def _rotate_if_full(self, incoming: int) -> None:
        if not self.path.is_file() or self.size() + incoming <= self.max_bytes or self.size() == 0:
            return
        self._rotate()
        log.info("%s: rotated at %d bytes", self.path, self.max_bytes)

    def _rotate(self) -> None:
        self._born = self._clock()
        rotated = [self.path.with_name(f"{self.path.name}.{n}") for n in range(1, self.keep + 1)]
        if self.keep == 0:
            self.path.unlink()
            return
        rotated[-1].unlink(missing_ok=True)
        for older, newer in zip(reversed(rotated[1:]), reversed(rotated[:-1]), strict=True):
            if newer.exists():
                os.replace(newer, older)
        os.replace(self.path, rotated[0])

    def _unavailable(self, what: str, exc: OSError) -> StateUnavailable:
        return StateUnavailable(f"state: {what} {self.path} ({exc.strerror or exc}); nothing was stored, "
                                "retry once the state directory is writable and has space")


def _cut(fd: int, size: int) -> None:
    """Drop the part of a refused write that did land, so no half line stays behind."""
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass
