"""Helper processes of a long replay: the machine's other cores for recorded decisions.

A replayed decision is Python and WASM on one thread, and a second thread of the same process does
not overlap it: each waits for the interpreter lock the other holds (benchmarks/README.md, "Where
a replayed decision's time goes"). So a replay of at least `replay_helpers_from` decisions hands
chunks of them to helper processes (`decide_all(..., helpers=)`), each holding the same candidate:

- the signed archive, verified again in the helper as every bundle is;
- its module as the replaying process compiled it (wasmtime's serialized form, in a directory of
  this user's only, removed after the replay), so no helper spends seconds in Cranelift;
- the policies and the recorded judgments.

A helper cannot ask a model. A chunk in which a judgment was neither recorded nor known comes back
undecided, and the replaying process decides it itself through the `Oracle` that alone asks anew
(and counts and costs what it asks), so a report is the same with helpers or without. A helper
that dies, or fails to start, costs only its chunks, which the replaying process decides too.

Helpers are forked from a server process (multiprocessing's `forkserver`, this module preloaded)
that the impact service starts with the control plane (`warm`) and keeps: a helper then costs a
fork and a load (~50 ms), not an interpreter's start and the control plane's imports (~1.6 s). The
server forks before any wasmtime engine exists in it, so every helper makes its own (an engine's
threads do not survive `fork()`). Helpers run at nice 5, as a policy write's side stages do: live
evaluations come first. As with any multiprocessing child started this way, a program that
replays with helpers must keep its main module's work under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from bridge.opabundle.keys import VerificationKey
from bridge.opawasm import HostConfig, LoadOptions, WasmEvaluator
from bridge.opawasm.bundle import policy_wasm, verified_files
from bridge.opawasm.engine import save_compiled
from controlplane.impact.records import Chunk, Outcome
from controlplane.impact.replay import Oracle, ReplayPipeline, agent_outcomes
from controlplane.policies.schemas import PolicyRecord

log = logging.getLogger(__name__)
HELPER_NICE = 5
HELPER_POOL_SIZE = 4  # instances per helper: its loop's thread and the pipeline's chunk helper
IN_FLIGHT = 2  # chunks per helper at once: the next one is there when it finishes one
# a chunk takes a helper well under a second (it asks no model): one that takes this long is a helper
# that hangs, which is then killed and its chunks decided by the replaying process
CHUNK_TIMEOUT_S = 120.0
CLOSE_WAIT_S = 5.0  # for helpers to finish their chunk and exit at the end of a replay, before they are killed


class Setup(msgspec.Struct, kw_only=True):
    """What a helper is started with (msgpack, through the pool's initializer)."""

    archive: bytes
    kid: str
    alg: str
    public_pem: str
    bridge_url: str
    modules: str  # the directory holding the candidate's compiled module
    records: list[PolicyRecord]
    replies: dict[str, Any]  # recorded judgments by request key (`records.judgment_key`)
    final_misses: bool  # True: the replaying process cannot ask either, so a miss decides as it is


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    # before the server starts (one per process): a helper needs the replay's pipeline, imported once
    # Each helper also runs this process's main module again, as multiprocessing does (as
    # `__mp_main__`, so its `if __name__ == "__main__"` part does not run); a main run with `-m`
    # (`python -m controlplane.ops.cli serve`) is imported in the server too, so that costs no imports
    main = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None)
    preload = [__name__]
    ctx.set_forkserver_preload([*preload, main] if main and not main.endswith("__main__") else preload)
    return ctx


def warm() -> None:
    """Start the fork server now (its imports take ~1.6 s) rather than at the first replay that wants
    helpers, and wait until it forks. Blocking: run it in a thread."""
    probe = _context().Process(target=_ready, name="replay-helper-probe")
    probe.start()
    probe.join()


def _ready() -> None:
    """The probe `warm` forks: the server has finished its imports once it forked this."""


class Helpers:
    """`count` helper processes holding one candidate, for one replay (`close` when it ends)."""

    def __init__(self, count: int, *, archive: bytes, key: VerificationKey, bridge_url: str,
                 records: list[PolicyRecord], replies: dict[str, Any], final_misses: bool) -> None:
        """Blocking (verifies the archive and writes its module to disk): run it in a thread."""
        self.count = count
        self.in_flight = IN_FLIGHT
        self.lost = 0  # chunks a helper did not decide because it failed (died, did not start)
        self.undecided = 0  # chunks handed back for a judgment the helper did not know
        self._dir = tempfile.mkdtemp(prefix="groqpolicy-replay-")  # 0700: compiled modules are native code
        try:
            files = verified_files(archive, {key.kid: key}, LoadOptions(keyid=key.kid))
            save_compiled(policy_wasm(files), Path(self._dir))
            setup = msgspec.msgpack.encode(Setup(
                archive=archive, kid=key.kid, alg=key.alg, public_pem=key.public_pem, bridge_url=bridge_url,
                modules=self._dir, records=records, replies=replies, final_misses=final_misses))
            self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
                count, mp_context=_context(), initializer=_start, initargs=(setup,))
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    @property
    def alive(self) -> bool:
        return self._pool is not None

    def pids(self) -> list[int]:
        """The helper processes running now (the fork server's children, not this process's)."""
        pool = self._pool
        procs = getattr(pool, "_processes", None) or {}  # the executor keeps no public list of its workers
        return [p.pid for p in procs.values() if p.pid]

    async def decide(self, chunk: Chunk) -> tuple[list[Outcome], list[str]] | None:
        """(the outcomes of the chunk's contexts, the recorded judgments it used first), or None: the
        replaying process decides this chunk itself."""
        pool = self._pool
        if pool is None:
            return None
        try:
            # submitting may wait for the fork server's start (its imports): not on the replay's loop
            future = await asyncio.to_thread(pool.submit, _decide, msgspec.msgpack.encode(chunk))
            found: bytes | None = await asyncio.wait_for(asyncio.wrap_future(future), CHUNK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a helper that fails loses its chunks to the replaying process, never the replay
            self.lost += 1
            if self._pool is not None:
                log.warning("replay helper failed (%s: %s); the replaying process decides the rest",
                            type(exc).__name__, exc)
                self._drop()
            return None
        if found is None:
            self.undecided += 1
            return None
        return msgspec.msgpack.decode(found, type=tuple[list[Outcome], list[str]])

    def _drop(self) -> None:
        pids = _identified(self.pids())
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pids)  # one that hangs would never take the executor's word to stop
            _close(_answers(pool))
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the helpers (each finishes its chunk; one that has not within CLOSE_WAIT_S is killed)
        and remove the module's directory. Blocking: run it in a thread."""
        pids = _identified(self.pids())
        pool, self._pool = self._pool, None
        if pool is not None:
            answers = _answers(pool)  # before shutdown() lets go of it
            pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + CLOSE_WAIT_S
            while (pids := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
                time.sleep(0.01)
            _kill(pids)
            _close(answers)
        shutil.rmtree(self._dir, ignore_errors=True)


def _answers(pool: ProcessPoolExecutor) -> Any:
    """This process's writing end of the pipe the helpers answer on (the executor has no public
    handle on it; None if its internals change)."""
    return getattr(getattr(pool, "_result_queue", None), "_writer", None)


def _close(answers: Any) -> None:
    """Close `answers` (`_answers`) once the helpers are gone: a helper killed in the middle of an
    answer leaves part of a message in the pipe, and the executor's manager thread waits for the
    rest; while this process keeps a writing end open that wait never ends, and the process cannot
    exit (interpreter shutdown joins the thread). With this end closed too the read ends, and the
    executor counts itself broken."""
    if answers is not None:
        with contextlib.suppress(OSError):
            answers.close()


def _started(pid: int) -> str | None:
    """When `pid` started (/proc's clock ticks since boot), or None when it is gone: with the pid, the
    identity of a helper, so that a pid reused after it exited is never signalled."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _identified(pids: list[int]) -> list[tuple[int, str]]:
    return [(pid, started) for pid in pids if (started := _started(pid)) is not None]


def _running(helper: tuple[int, str]) -> bool:
    return _started(helper[0]) == helper[1]  # the fork server reaps its children: gone means gone


def _kill(helpers: list[tuple[int, str]]) -> None:
    for helper in helpers:
        if _running(helper):
            with contextlib.suppress(OSError):
                os.kill(helper[0], signal.SIGKILL)


# ---- in the helper ------------------------------------------------------------------------------
class _Helper:
    def __init__(self, setup: Setup) -> None:
        self.final_misses = setup.final_misses
        self.oracle = Oracle({}, None)
        self.oracle.replies = setup.replies
        self.told: set[str] = set()  # the recorded judgments the replaying process has been told this helper used
        key = VerificationKey(kid=setup.kid, alg=setup.alg, public_pem=setup.public_pem)
        self.evaluator = WasmEvaluator({key.kid: key}, keyid=key.kid, pool_size=HELPER_POOL_SIZE,
                                       module_cache=Path(setup.modules),
                                       host=HostConfig(bridge_url=setup.bridge_url, infer_transport=self.oracle.transport,
                                                       send_memo=self.oracle.memo))
        self.evaluator.load(setup.archive)
        records = self.records = setup.records
        # one core's share each (the replay's thread and the other helpers have the rest): no chunk thread
        self.pipeline = ReplayPipeline(self.evaluator, lambda: records, ask_model=self.oracle.ask, split=False)
        self.loop = asyncio.new_event_loop()

    def decide(self, chunk: Chunk) -> bytes | None:
        oracle = self.oracle
        missed = oracle.missed
        if chunk.path:
            found = agent_outcomes(self.records, self.evaluator, chunk.path, chunk.inputs)
        else:
            found = self.loop.run_until_complete(self.pipeline.outcomes(chunk.inputs, policy_types=chunk.policy_types,
                                                                        tier=chunk.tier, constitutional_hash=chunk.constitutional_hash))
        if oracle.missed != missed and not self.final_misses:
            return None
        used = sorted(oracle.used - self.told)  # each judgment told once; one a chunk handed back used stays untold
        self.told.update(used)
        return msgspec.msgpack.encode((found, used))


_helper: _Helper | None = None


def _start(setup: bytes) -> None:
    global _helper
    with contextlib.suppress(OSError):
        os.nice(HELPER_NICE)
    _helper = _Helper(msgspec.msgpack.decode(setup, type=Setup))


def _decide(chunk: bytes) -> bytes | None:
    if _helper is None:
        raise RuntimeError("replay helper: not started")
    return _helper.decide(msgspec.msgpack.decode(chunk, type=Chunk))
