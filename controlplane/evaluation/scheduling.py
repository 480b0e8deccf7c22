"""Where the pipeline's WASM work runs: inline on the event loop's thread when it fits the inline
budget, otherwise on a bounded pool of evaluation threads with a bounded queue in front of it.

Why inline at all: a trivial evaluation costs ~5 µs, a hand-over to a thread and back tens of µs
(two wake-ups on a loaded machine), a real share of `/api/v1/evaluate`'s p50. Why not always: one
runaway policy on the loop's thread stops `/health`, bundle long polls and every other request for
its whole deadline. The inline budget (`bridge.opawasm`: a count of wasm instructions, about a
millisecond, plus a clock for host builtins) makes "cheap" a proof per call instead of a guess per
policy: an evaluation that does not fit stops within about a millisecond with
InlineBudgetExceeded, and the work is done again, from its start (it is pure), on an evaluation
thread with its full deadline. Whether a policy and input fit does not depend on the load.

Bounded: two lanes of threads (`Scheduler`: pure computation on as many threads as CPUs, model
calls on more), each evaluation holding a policy instance (the pool has one more, which inline
work finds idle). A request that needs a thread is let in while fewer than `threads + queue`
evaluations hold or wait for one of its lane; beyond that the caller gets `Saturated` (503 with
Retry-After) instead of an unbounded wait. The check is per request: the evaluations of one batch
that is let in all go to the queue (`offload_admitted`), so a batch never fails half-way.

Batches: from `SPLIT_AT` contexts a batch is cut into chunks of `CHUNK`, which the loop's thread
(inline, yielding to other requests between chunks) and one evaluation thread take in turn: the
GIL is released while WASM runs, so one thread's Python overlaps the other's WASM.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bridge.kernel.errors import DeadlineExceeded, Unavailable
from bridge.kernel.tasks import retrieve_outcome
from bridge.opawasm import UNDEFINED
from bridge.opawasm.errors import InlineBudgetExceeded
from controlplane.evaluation.interfaces import Revision

log = logging.getLogger(__name__)

SPLIT_AT = 16  # from this many contexts, a batch is decided on two threads, in chunks of
CHUNK = 25  # this many contexts (each hand-over of the GIL between the threads has a cost)
INLINE_TIMEOUT_S = 1.0  # an entrypoint without network calls: pure computation
WASM_POOL_SIZE = 16  # instances of the in-process evaluator (each a few MiB of linear memory)
QUEUE = 32  # evaluations that may wait for a thread (GROQPOLICY_EVALUATION_QUEUE)
# Compute threads run at a lower CPU priority than the event loop's thread (Linux sets `nice` per
# thread): runaways on every core otherwise take the loop's share (benchmarks/README.md). Not the
# blocking lane's: its threads mostly wait on NATS, and at `nice` 10 on a busy machine each of their
# short wake-ups waited behind everything else (a model-backed evaluation's p50 went 3 -> 565 ms).
# A thread that cannot lower its priority runs at the process's.
COMPUTE_NICE = 10
_T = TypeVar("_T")
Work = Callable[[int, int, Revision], _T]  # (start, stop, the revision to evaluate on) -> a chunk's result


class Saturated(Unavailable):
    """Every evaluation thread is busy and the queue in front of them is full (503, Retry-After)."""

    code = "evaluation_saturated"


class Inline:
    """A revision whose evaluations must fit the inline budget (InlineBudgetExceeded beyond)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Revision) -> None:
        self.inner = inner

    @property
    def revision(self) -> str | None:
        return self.inner.revision

    def evaluate(self, entrypoint: str, input: Any = None, *, timeout: float | None = None,
                 inline: bool | int = True) -> Any:
        # a batched call (a list of contexts, at most a chunk of them) gets a budget per context: one
        # budget for the whole chunk overran on every chunk and did the work twice, on a new instance
        units = min(len(input), CHUNK) if isinstance(input, list) and input else 1
        return self.inner.evaluate(entrypoint, input, timeout=timeout, inline=units)


def run_batched(evaluator: Revision, single: str, many: str, inputs: list[Any], *,
                wrapped: bool, per_input: float | None = None) -> tuple[list[Any], list[str]]:
    """(value per input, error per input or "") of an entrypoint that cannot block, on this thread.

    One input goes to the `single` entrypoint; several to the batched `many` one (whose answer is
    a value per input, or with `wrapped` `[value]` / `[]` for undefined). A batched call that fails
    is redone one input at a time, so each error lands on its own input, except when it ran out of
    time: then every input of it fails with that error. InlineBudgetExceeded is not a failure of
    the policy: it goes up to the scheduler, which does the work again on a thread.

    Deadline: `INLINE_TIMEOUT_S` for the call, batched or single; with `per_input`, that many
    seconds for each input of a batched call (a replay's, whose calls are longer than the live
    path's; a policy that asks a model: a round trip per input), and for a single input at least
    `INLINE_TIMEOUT_S`."""
    n = len(inputs)
    evaluate = evaluator.evaluate
    single_s = INLINE_TIMEOUT_S if per_input is None else max(per_input, INLINE_TIMEOUT_S)
    if n > 1:
        try:
            out = evaluate(many, inputs, timeout=INLINE_TIMEOUT_S if per_input is None else per_input * n)
            if not isinstance(out, list) or len(out) != n:
                raise ValueError(f"{many}: no list of {n} results")
            if wrapped:
                out = [v[0] if v else UNDEFINED for v in out]
            return out, [""] * n
        except InlineBudgetExceeded:
            raise
        except DeadlineExceeded as exc:
            why = f"{type(exc).__name__}: {exc} (one evaluation for {n} contexts)"
            return [None] * n, [why] * n
        except Exception as exc:  # noqa: BLE001 - redone one by one below, where each input fails closed
            log.debug("batched evaluation of %s failed (%r); evaluating one by one", many, exc)
    values: list[Any] = []
    errors: list[str] = []
    for x in inputs:
        try:
            values.append(evaluate(single, x, timeout=single_s))
            errors.append("")
        except InlineBudgetExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed: the caller turns it into a deny
            values.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return values, errors


class Lane:
    """Threads for one kind of evaluation, the queue in front of them, and how many are let in."""

    def __init__(self, name: str, threads: int, queue: int, *, nice: int = 0) -> None:
        self.name, self.threads, self.queue = name, max(1, threads), max(0, queue)
        self.admitted = 0  # evaluations on a thread or waiting for one (changed on the loop's thread only)
        self._slots = asyncio.Semaphore(self.threads)
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"wasm-{name}",
                                            initializer=_lower_priority, initargs=(nice,))

    def admit(self) -> None:
        """Let a request's evaluations in, or raise Saturated when the threads and the queue are full."""
        if self.admitted >= self.threads + self.queue:
            raise Saturated(f"evaluation: all {self.threads} {self.name} evaluation threads are busy and at least "
                            f"{self.queue} evaluations are waiting for one; retry shortly")

    async def offload(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """`fn(*args, **kwargs)` on a thread of this lane, for a request not let in yet (`admit`)."""
        self.admit()
        return await self.offload_admitted(fn, *args, **kwargs)

    async def offload_admitted(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """`fn(*args, **kwargs)` on a thread of this lane once one is free, in this task's context
        (its context variables: the model stage's meter), for a request already let in."""
        self.admitted += 1
        try:
            await self._slots.acquire()
        except BaseException:
            self.admitted -= 1
            raise
        loop = asyncio.get_running_loop()
        try:
            fut = self._executor.submit(contextvars.copy_context().run, fn, *args, **kwargs)
        except BaseException:
            self._release()
            raise
        # the slot is free when the thread is, not when the caller stops waiting (a cancelled
        # request leaves its evaluation running to its deadline)
        fut.add_done_callback(lambda _: _call_soon(loop, self._release))
        return await asyncio.wrap_future(fut)

    def _release(self) -> None:
        self.admitted -= 1
        self._slots.release()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Scheduler:
    """The two lanes of one pipeline's evaluations off the event loop, and the batch chunks.

    `compute`: evaluations that did not fit the inline budget, i.e. pure computation; as many
    threads as CPUs, since more only take the event loop's share of the cores (with 8 runaways on
    15 threads, the loop lagged 4.8 ms at p50 and 104 ms at p99; on 2 threads 0.5 and 28 ms).
    `blocking`: evaluations that may wait on a model (`http.send`), mostly waiting on NATS. The
    evaluator's pool has an instance for every thread of both, and one for inline work."""

    def __init__(self, pool_size: int | None, *, queue: int = QUEUE, cpu_threads: int = 0) -> None:
        threads = max(2, (pool_size or WASM_POOL_SIZE) - 1)
        cpus = min(threads - 1, cpu_threads or os.cpu_count() or 1)
        self.compute = Lane("compute", cpus, queue, nice=COMPUTE_NICE)
        self.blocking = Lane("blocking", threads - cpus, queue)
        self.overruns = 0  # inline attempts that did not fit and went to a thread
        # False for a loop that may wait (a replay's own, on a thread of its own): work on the loop's
        # thread then runs whole, with its full deadline, instead of within the inline budget
        self.budget = True
        self.chunk = CHUNK  # contexts per chunk of a batch (`chunked`)
        # False where the other cores are taken already (a replay with helper processes): a chunk
        # thread beside the loop's would only contend with them for the cores and for the GIL
        self.split = True

    def _here(self, evaluator: Revision) -> Revision:
        """The revision as work on the loop's thread evaluates it."""
        return Inline(evaluator) if self.budget else evaluator

    async def run(self, work: Work[_T], evaluator: Revision, start: int, stop: int) -> _T:
        """`work(start, stop, ...)` inline if it fits the inline budget, else on a thread."""
        try:
            return work(start, stop, self._here(evaluator))
        except InlineBudgetExceeded:
            self.overruns += 1
        return await self.compute.offload(work, start, stop, evaluator)

    async def evaluate(self, evaluator: Revision, entrypoint: str, input: Any, *, timeout: float, may_block: bool) -> Any:
        """One entrypoint's value: inline when it cannot block and fits the inline budget, else on a thread."""
        if not may_block:
            try:
                return evaluator.evaluate(entrypoint, input, timeout=timeout, inline=self.budget)
            except InlineBudgetExceeded:
                self.overruns += 1
        lane = self.blocking if may_block else self.compute
        return await lane.offload(evaluator.evaluate, entrypoint, input, timeout=timeout)

    async def chunked(self, work: Work[_T], evaluator: Revision, n: int) -> list[_T]:
        """`work(start, stop, revision)` over consecutive chunks of `range(n)`, in order.

        Below SPLIT_AT items: one call (`run`). From SPLIT_AT up, the loop's thread (inline) and an
        evaluation thread (unless `split` is off) take chunks in turn as each finishes one, so both
        cores work until the last chunk; a chunk that does not fit inline goes to a thread of its
        own. The loop's thread lets other requests in between its chunks."""
        if n < SPLIT_AT:
            return [await self.run(work, evaluator, 0, n)]
        size = self.chunk
        bounds = [(k, min(k + size, n)) for k in range(0, n, size)]
        out: list[Any] = [None] * len(bounds)
        claims = itertools.count()  # next() on it is atomic: each chunk goes to exactly one thread
        abandoned = False  # the caller stopped waiting (cancelled): the helper claims no more chunks

        def take_chunks() -> None:
            while not abandoned and (k := next(claims)) < len(bounds):
                out[k] = work(*bounds[k], evaluator)

        compute = self.compute
        helper = None
        if self.split and compute.admitted < compute.threads:  # a helper only when a thread is free: never wait for one
            helper = asyncio.ensure_future(compute.offload(take_chunks))
            helper.add_done_callback(retrieve_outcome)  # raised to the caller that awaits it, if any
        inline, late = self._here(evaluator), []
        try:
            while (k := next(claims)) < len(bounds):
                try:
                    out[k] = work(*bounds[k], inline)
                except InlineBudgetExceeded:
                    late.append(k)
                await asyncio.sleep(0)
            self.overruns += len(late)
            if late:
                compute.admit()
            done = await asyncio.gather(*(compute.offload_admitted(work, *bounds[k], evaluator) for k in late))
            for k, result in zip(late, done, strict=True):
                out[k] = result
            if helper is not None and any(o is None for o in out):
                await helper  # every chunk is claimed: the ones missing are the helper's
        finally:
            abandoned = True
            if helper is not None and not helper.done():
                helper.cancel()  # it claimed no chunk (or the call failed): not waited for
        return out

    def close(self) -> None:
        self.compute.close()
        self.blocking.close()


def _lower_priority(nice: int) -> None:
    if not nice:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not allowed: the process's priority
        pass


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nobody is left to count
        pass

