"""Active bundle revisions: what the bundle server hands out, and who is waiting for the next one.

A revision is a pair of signed archives (rego for OPA agents, wasm for the in-process evaluator).
Activation is atomic (one dict assignment under a lock) and wakes every long-polling request for
that bundle at once. When a state dir is given, archives and the active pointer are kept on disk
so a restart serves the same revision (same bytes, same ETag) it served before. A stored revision
that cannot be read back (damaged metadata, an archive that no longer matches its ETag) is moved
aside as `*.quarantine` with one log line; the start goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

from controlplane.infra.jsonlines import StateUnavailable

log = logging.getLogger(__name__)

TARGETS = ("rego", "wasm")
HISTORY_LIMIT = 50


class Revision(msgspec.Struct, frozen=True):
    bundle: str
    revision: str
    target: str
    etag: str  # strong validator, quoted as HTTP wants it
    size: int
    activated_at: float
    signed_by: str = ""


class _Active(msgspec.Struct, frozen=True):
    meta: Revision
    archive: bytes


def strong_etag(archive: bytes) -> str:
    return '"' + hashlib.sha256(archive).hexdigest()[:40] + '"'


class RevisionStore:
    """Thread-safe map bundle name -> active revision per target, with change notification."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], _Active] = {}
        self._history: dict[str, list[Revision]] = {}
        self._waiters: dict[tuple[str, str], list[tuple[asyncio.AbstractEventLoop, asyncio.Future]]] = {}
        self._dir = state_dir / "bundles" if state_dir else None
        if self._dir:
            self._load()

    # -- activation -------------------------------------------------------------------------
    def activate(self, bundle: str, revision: str, archives: dict[str, bytes], signed_by: str = "") -> dict[str, Revision]:
        """Make `archives` ({target: tar.gz bytes}) the active revision of `bundle`, atomically."""
        unknown = set(archives) - set(TARGETS)
        if unknown:
            raise ValueError(f"unknown bundle target(s) {sorted(unknown)}; expected {list(TARGETS)}")
        now = time.time()
        entries = {
            target: _Active(
                meta=Revision(bundle=bundle, revision=revision, target=target, etag=strong_etag(data),
                              size=len(data), activated_at=now, signed_by=signed_by),
                archive=data,
            )
            for target, data in archives.items()
        }
        if self._dir:
            try:
                self._persist(bundle, entries)
            except OSError as exc:  # a full disk, an unwritable state dir: the old revision keeps serving
                raise StateUnavailable(f"state: cannot store revision {revision!r} of bundle {bundle!r} in {self._dir} "
                                       f"({exc.strerror or exc}); it is not activated") from exc
        with self._lock:
            for target, entry in entries.items():
                self._active[(bundle, target)] = entry
            history = self._history.setdefault(bundle, [])
            history.extend(e.meta for e in entries.values())
            del history[:-HISTORY_LIMIT]
            woken = [w for t in entries for w in self._waiters.pop((bundle, t), [])]
        for loop, fut in woken:
            loop.call_soon_threadsafe(_resolve, fut)
        return {t: e.meta for t, e in entries.items()}

    # -- reads ------------------------------------------------------------------------------
    def get(self, bundle: str, target: str = "rego") -> tuple[Revision, bytes] | None:
        entry = self._active.get((bundle, target))
        return (entry.meta, entry.archive) if entry else None

    def bundles(self) -> list[Revision]:
        with self._lock:
            return sorted((e.meta for e in self._active.values()), key=lambda r: (r.bundle, r.target))

    def history(self, bundle: str) -> list[Revision]:
        with self._lock:
            return list(self._history.get(bundle, []))

    def waiting(self, bundle: str, target: str = "rego") -> int:
        """How many requests are waiting (long polling) for the next revision of `bundle`."""
        with self._lock:
            return len(self._waiters.get((bundle, target), []))

    async def wait_for_change(self, bundle: str, target: str, known_etags: Iterable[str], timeout: float) -> bool:
        """Wait until the active ETag is not one of `known_etags`; False when `timeout` passes first."""
        known = set(known_etags)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        with self._lock:
            entry = self._active.get((bundle, target))
            if entry is not None and entry.meta.etag not in known:
                return True
            self._waiters.setdefault((bundle, target), []).append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiters = self._waiters.get((bundle, target), [])
                if (loop, fut) in waiters:
                    waiters.remove((loop, fut))

    # -- persistence ------------------------------------------------------------------------
    def _persist(self, bundle: str, entries: dict[str, _Active]) -> None:
        assert self._dir is not None
        bdir = self._dir / bundle
        bdir.mkdir(parents=True, exist_ok=True)
        for target, entry in entries.items():
            _atomic_write(bdir / f"{target}.tar.gz", entry.archive)
            _atomic_write(bdir / f"{target}.json", msgspec.json.encode(entry.meta))

    def _load(self) -> None:
        assert self._dir is not None
        if not self._dir.is_dir():
            return
        for bdir in sorted(p for p in self._dir.iterdir() if p.is_dir()):
            for target in TARGETS:
                meta_path, archive_path = bdir / f"{target}.json", bdir / f"{target}.tar.gz"
                if not (meta_path.is_file() and archive_path.is_file()):
                    continue
                try:
                    meta = msgspec.json.decode(meta_path.read_bytes(), type=Revision)
                    archive = archive_path.read_bytes()
                except (OSError, msgspec.DecodeError) as exc:
                    _set_aside(meta_path, archive_path, f"unreadable ({exc})")
                    continue
                if strong_etag(archive) != meta.etag:
                    # a torn write: never serve bytes that do not match their ETag; the next publish replaces it
                    _set_aside(meta_path, archive_path, f"archive does not match its ETag {meta.etag}")
                    continue
                self._active[(meta.bundle, target)] = _Active(meta=meta, archive=archive)
                self._history.setdefault(meta.bundle, []).append(meta)


def _set_aside(meta_path: Path, archive_path: Path, why: str) -> None:
    """Move an active revision that cannot be served to `*.quarantine` (one log line); the start goes on."""
    log.warning("bundle revisions: %s: %s; moved aside to *.quarantine", meta_path, why)
    for path in (meta_path, archive_path):
        try:
            os.replace(path, path.with_name(path.name + ".quarantine"))
        except OSError:
            pass


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(True)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
