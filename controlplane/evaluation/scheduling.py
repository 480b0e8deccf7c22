"""Where the pipeline's WASM work runs: batched calls into the module, chunks of a batch over two
threads, and the slots that keep one evaluator instance free for the event loop's thread.

The GIL is released while WASM runs, so from `SPLIT_AT` contexts a batch is cut into chunks of
`CHUNK` that the event loop's thread and one helper thread take in turn: one thread's Python
overlaps the other's WASM. Evaluations that may wait on a model hold an instance while the event
loop fetches the answer; every evaluation off the loop's thread takes a slot first, and there is
one slot fewer than instances, so the loop thread (which evaluates the inline stages itself)
never waits for an instance that only the loop could free.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bridge.kernel.errors import DeadlineExceeded
from bridge.opawasm import UNDEFINED
from controlplane.evaluation.interfaces import Revision

log = logging.getLogger(__name__)

SPLIT_AT = 16  # from this many contexts, a batch is decided on two threads, in chunks of
CHUNK = 25  # this many contexts (each hand-over of the GIL between the threads has a cost)
INLINE_TIMEOUT_S = 1.0  # an entrypoint without network calls: pure computation
WASM_POOL_SIZE = 16  # instances of the in-process evaluator (each a few MiB of linear memory)
_T = TypeVar("_T")


def run_batched(evaluator: Revision, single: str, many: str, inputs: list[Any], *,
                wrapped: bool) -> tuple[list[Any], list[str]]:
    """(value per input, error per input or "") of an entrypoint that cannot block, on this thread.

    One input goes to the `single` entrypoint; several to the batched `many` one (whose answer is
    a value per input, or with `wrapped` `[value]` / `[]` for undefined). A batched call that fails
    is redone one input at a time, so each error lands on its own input, except when it ran out of
    time: then every input of it fails with that error."""
    n = len(inputs)
    evaluate = evaluator.evaluate
    if n > 1:
        try:
            out = evaluate(many, inputs, timeout=INLINE_TIMEOUT_S)
            if not isinstance(out, list) or len(out) != n:
                raise ValueError(f"{many}: no list of {n} results")
            if wrapped:
                out = [v[0] if v else UNDEFINED for v in out]
            return out, [""] * n
        except DeadlineExceeded as exc:
            why = f"{type(exc).__name__}: {exc} (one evaluation for {n} contexts)"
            return [None] * n, [why] * n
        except Exception as exc:  # noqa: BLE001 - redone one by one below, where each input fails closed
            log.debug("batched evaluation of %s failed (%r); evaluating one by one", many, exc)
    values: list[Any] = []
    errors: list[str] = []
    for x in inputs:
        try:
            values.append(evaluate(single, x, timeout=INLINE_TIMEOUT_S))
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - fail closed: the caller turns it into a deny
            values.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return values, errors


class Scheduler:
    """The helper thread and the blocking slots of one pipeline."""

    def __init__(self, pool_size: int | None) -> None:
        self.blocking_slots = asyncio.Semaphore(max(1, (pool_size or WASM_POOL_SIZE) - 1))
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wasm-chunks")

    async def chunked(self, work: Callable[[int, int], _T], n: int) -> list[_T]:
        """`work(start, stop)` over consecutive chunks of `range(n)`, in order.

        Below SPLIT_AT items: one call, on the loop thread. From SPLIT_AT up, the loop thread and
        the helper take chunks in turn as each finishes one, so both cores work until the last
        chunk whatever the helper's start-up delay; the loop thread then waits only for the chunk
        the helper holds."""
        if n < SPLIT_AT:
            return [work(0, n)]
        bounds = [(k, min(k + CHUNK, n)) for k in range(0, n, CHUNK)]
        out: list[Any] = [None] * len(bounds)
        claims = itertools.count()  # next() on it is atomic: each chunk goes to exactly one thread

        def take_chunks() -> None:
            while (k := next(claims)) < len(bounds):
                out[k] = work(*bounds[k])

        # the helper holds an instance like a blocking evaluation does, so the loop thread always
        # finds the instance kept free for it
        async with self.blocking_slots:
            helper = self._helper.submit(take_chunks)
            try:
                take_chunks()
            finally:
                if not helper.cancel():  # not started yet: the loop thread did everything
                    helper.result()  # at most the one chunk it holds
        return out

    def close(self) -> None:
        self._helper.shutdown(wait=False, cancel_futures=True)
