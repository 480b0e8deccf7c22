"""The fuel-free lane: a revision's second pool, on an engine that counts no wasm instructions.

Fuel is what makes the inline budget a count (the same policy and input fit or not under any load)
and what tells a runaway from an evaluation that is merely too big (`RUNAWAY_FUEL_PER_S`). Neither
needs it on an evaluation that is not inline and whose failures can be told apart again: such an
evaluation runs here, on the same module compiled for an engine without fuel, bounded by the same
epoch deadline and memory cap. Counting costs guest-heavy policies ~13% (benchmarks/README.md).

What keeps every guarantee of the fuel lane:
- **Inline evaluations never come here**: their budget is fuel.
- **Time**: epochs interrupt a fuel-free evaluation exactly as a fueled one; a runaway loop stops at
  its deadline with `DeadlineExceeded`.
- **The one failure fuel classifies** (out of memory: a runaway or too big?) is not answered here:
  the evaluation runs again on a fuel instance with its whole deadline (not what this run left of
  it, which would turn a big evaluation's OutOfMemory into DeadlineExceeded on a loaded machine),
  and that answer stands, so a policy and input still fail the same way every time. The price: an
  evaluation that hits the memory cap may hold its thread for up to twice its deadline. Traps are
  the same with or without fuel and are answered here, as are deadline overruns (the fuel lane's
  clock check comes before its count).
- **A second run must be harmless**: a policy that can call `http.send` or `net.lookup_ip_addr`
  (`WasmPolicy.may_block`) never gets a lane (nor does a module loaded inside `load_check()`).

The lane's module is compiled on demand: when the revision's first evaluation off the loop comes
(`start`), in a background thread at the lowest CPU priority, and until it is ready evaluations
take the fuel lane. Not at load: the serving engine's compile is on the hot-swap path, and a policy
write followed by another would have the second write's checks and builds share the cores with
the first revision's second compile (measured: the write's response 1.3x slower), for a revision
that may never evaluate off the loop. Compiled modules are cached per engine, in memory and on disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import wasmtime

from bridge.opawasm.engine import compile_policy
from bridge.opawasm.errors import WasmError
from bridge.opawasm.pool import InstancePool
from bridge.opawasm.runtime import Instance

log = logging.getLogger("groqpolicy.wasm")
# Lanes compile one after another: revisions written in quick succession do not each take a core
# for a Cranelift compile at once, and one replaced while it waited is never compiled.
_ONE_COMPILE_AT_A_TIME = threading.Lock()


class FuelFreeLane:
    """A pool of fuel-free instances for one revision, ready once its module is compiled (`start`)."""

    def __init__(self, wasm: bytes, module_cache: Path | None, size: int,
                 factory: Callable[[wasmtime.Module], Instance]) -> None:
        self.pool: InstancePool[Instance] | None = None  # None until compiled (and after close)
        self.ready = threading.Event()  # set once the compile has ended, whether the lane came or not
        self._lock = threading.Lock()
        self._started = self._closed = False
        self._wasm, self._module_cache = wasm, module_cache
        self._size, self._factory = size, factory

    def start(self) -> None:
        """Compile the lane's module in the background, once; cheap to call again."""
        if self._started:
            return
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        threading.Thread(target=self._compile, name="wasm-fuel-free-compile", daemon=True).start()

    def _compile(self) -> None:
        # idle CPU only: serving and policy writes come first (Linux: a thread's own nice value)
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        wasm, module_cache, self._wasm = self._wasm, self._module_cache, b""
        try:
            with _ONE_COMPILE_AT_A_TIME:
                if self._closed:  # replaced before its turn came: nobody would evaluate on it
                    return
                module = compile_policy(wasm, module_cache, fuel=False)
            with self._lock:
                if not self._closed:
                    self.pool = InstancePool(lambda: self._factory(module), self._size)
        except WasmError as exc:  # the fuel lane compiled the same bytes: only the platform can refuse
            log.warning("fuel-free lane not started: %s", exc)
        finally:
            self.ready.set()  # ready or not coming: evaluations keep the fuel lane

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
