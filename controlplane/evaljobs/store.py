"""Evaluation jobs kept in the control plane's state directory, 0600, so a finished job's results
survive a restart.

    <state_dir>/evaljobs/<id>.json      the job (`Job`), replaced atomically on every change
    <state_dir>/evaljobs/<id>.ndjson    its results, one `EvaluateResponse` a line in context order,
                                        written and fsync'd before the job says `completed`

The fallback for a control plane that starts without JetStream: jobs then live on the process that
ran them (with JetStream every process answers for every job: `controlplane.evaljobs.shared`). At
start every job that was queued or running when the process stopped is marked `interrupted`: it
never vanishes, and is never reported done. A job file that
cannot be read is moved aside to `<name>.quarantine` and logged; it never stops a start.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import msgspec

from bridge.kernel.errors import NotFound
from controlplane.evaljobs.schemas import FINISHED, Job
from controlplane.evaluation.schemas import EvaluateResponse
from controlplane.infra.private import open_private

log = logging.getLogger(__name__)
KEPT_JOBS = 200  # finished jobs kept on disk (the oldest go first)
_ID = re.compile(r"^[0-9a-f]{32}$")
_decode_job = msgspec.json.Decoder(Job)


class JobStore:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "evaljobs"

    def _path(self, job_id: str, suffix: str) -> Path:
        if not _ID.match(job_id):  # ids are ours: anything else names no file
            raise NotFound(f"evaluation job {job_id!r}: not found")
        return self.dir / f"{job_id}{suffix}"

    def load(self) -> list[Job]:
        """Every job on disk, oldest first; the unfinished ones marked `interrupted` (and saved)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        jobs = []
        for path in self.dir.glob("*.json"):
            try:
                job = _decode_job.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                log.error("evaluation job %s: unreadable (%s); moved to %s.quarantine", path.name, exc, path.name)
                path.replace(path.with_name(path.name + ".quarantine"))
                continue
            if job.state not in FINISHED:
                job.state, job.error = "interrupted", f"the control plane stopped while the job was {job.state}"
                self.save(job)
            jobs.append(job)
        jobs.sort(key=lambda j: j.created_at)
        return jobs

    def save(self, job: Job) -> None:
        path = self._path(job.id, ".json")
        tmp = path.with_name(path.name + ".tmp")
        with open_private(tmp, "wb") as fh:
            fh.write(msgspec.json.encode(job))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    def write_results(self, job_id: str, results: Iterable[EvaluateResponse]) -> None:
        path = self._path(job_id, ".ndjson")
        encoder = msgspec.json.Encoder()
        buf = bytearray()
        with open_private(path, "wb") as fh:
            for response in results:
                encoder.encode_into(response, buf, -1)
                buf.extend(b"\n")
                if len(buf) > 1 << 20:
                    fh.write(buf)
                    buf.clear()
            fh.write(buf)
            fh.flush()
            os.fsync(fh.fileno())

    def results_path(self, job_id: str) -> Path:
        return self._path(job_id, ".ndjson")

    def clear_downloads(self) -> None:
        """The directory ready for results downloaded from JetStream, none left from a previous run."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in self.dir.glob("*.download"):
            path.unlink(missing_ok=True)

    def forget(self, jobs: list[Job]) -> list[Job]:
        """Beyond `KEPT_JOBS` finished jobs, the oldest are deleted; the jobs kept."""
        finished = [j for j in jobs if j.state in FINISHED]
        gone = {j.id for j in finished[:max(0, len(finished) - KEPT_JOBS)]}
        for job_id in gone:
            for suffix in (".json", ".ndjson"):
                self._path(job_id, suffix).unlink(missing_ok=True)
        return [j for j in jobs if j.id not in gone]
