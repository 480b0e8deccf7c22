"""The process-wide wasmtime engine: epoch deadlines, fuel, fork safety, and compiled modules.

Deadlines use epoch interruption: one daemon thread bumps the engine's epoch every `TICK_S`, and
each call into a policy sets its deadline in ticks. Fuel (a count of executed wasm instructions)
bounds an *inline* evaluation, one made on a thread that must not wait (an event loop's): epochs
tick too coarsely for a budget of about a millisecond, and a count, unlike a clock, gives the same
answer for the same policy and input under any load. Every other evaluation runs on unlimited fuel.

Compiling a module (Cranelift) is far costlier than instantiating it, so compiled modules are kept
by content hash: a revision that changes only its data reuses the module, and its hot swap costs
an instantiation, not a compilation. A caller may also keep them on disk (`LoadOptions.module_cache`), for later processes: wasmtime's own
serialized form, which it refuses to load into an engine of another version or configuration.

A policy write must prove the evaluator can load its module (a builtin the host lacks, a bad import)
before the revision reaches any agent, but Cranelift takes ~1.2-3 s on the library's module. Inside
`load_check()` the same load runs on a second engine using Winch, wasmtime's baseline compiler (~7x
faster to compile, same validator, imports, fuel and epochs; its code runs the library ~1.5x slower).
Its module is kept in memory: when the evaluator follows the new revision it serves on it at once
(`WasmEvaluator.load(..., baseline_first=True)`) while the serving engine's compile runs behind, at
a low CPU priority, and swaps in when done. Started any earlier, that compile would take a core
from the write's own stages; waited for, it would hold the write's response and the agents'
activation on a busy machine for a second or more.

A third engine, made on first use, counts no fuel: the fuel-free lane (`lanes.py`), for evaluations
that are neither inline nor allowed to repeat a side effect. Counting costs the guest-heavy classes
~13% (benchmarks/README.md, "Fuel"); epochs still bound those evaluations' time.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import wasmtime
from wasmtime import _bindings

from bridge.opawasm.errors import BundleLoadError

# Deadline resolution: a deadline fires between its time and two ticks later. Each tick wakes a
# Python thread that takes the GIL, so a shorter tick costs an idle process CPU time and can cut
# into a request on the loop thread; 10 ms keeps both small.
TICK_S = 0.01
# Wasm instructions per second of deadline that make an evaluation a runaway when it also runs out
# of memory (`Instance._out_of_memory`). One thread of the benchmark machine runs ~4 billion a
# second on a long loop when idle and ~1 billion at load average 7.5 on its two cores; a tenth of
# that keeps "out of memory before this count" also "before the clock" at up to ~10x slowdown.
RUNAWAY_FUEL_PER_S = 100_000_000
COMPILED_CACHE_SIZE = 24  # 8 revisions, each compiled for the three engines (Winch's only after a write)
# wasmtime_strategy_t: 0 auto, 1 cranelift, 2 winch (wasmtime-py's `Config.strategy` names only the first two)
_STRATEGY_WINCH = 2


def deadline_ticks(seconds: float) -> int:
    """A deadline `seconds` from now, in epoch ticks (never less than one)."""
    return max(1, math.ceil(seconds / TICK_S) + 1)


class _Engine:
    """The serving engine, the load check's and the fuel-free lane's (each created on first use), and
    one epoch ticker for all."""

    lock = threading.Lock()
    engine: wasmtime.Engine | None = None
    check: wasmtime.Engine | None = None
    free: wasmtime.Engine | None = None
    ticking: list[wasmtime.Engine] = []

    @classmethod
    def get(cls) -> wasmtime.Engine:
        engine = cls.engine
        return engine if engine is not None else cls._first("engine", winch=False)

    @classmethod
    def get_check(cls) -> wasmtime.Engine:
        engine = cls.check
        return engine if engine is not None else cls._first("check", winch=True)

    @classmethod
    def get_free(cls) -> wasmtime.Engine:
        engine = cls.free
        return engine if engine is not None else cls._first("free", winch=False, fuel=False)

    @classmethod
    def _first(cls, attr: str, *, winch: bool, fuel: bool = True) -> wasmtime.Engine:
        with cls.lock:
            engine: wasmtime.Engine | None = getattr(cls, attr)
            if engine is None:
                engine = cls._start(winch=winch, fuel=fuel)
                setattr(cls, attr, engine)
            return engine

    @classmethod
    def _start(cls, winch: bool, fuel: bool = True) -> wasmtime.Engine:
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        cfg.consume_fuel = fuel  # costs ~1-2 µs per evaluation and ~20-40% on long loops (benchmarks/README.md)
        # linear memory is reserved up to its cap and never moves: instances keep one view over it
        cfg.memory_may_move = False
        cfg.cranelift_opt_level = "speed"
        # no compile thread pool: it would not survive fork() and compiles hang in the child (on this
        # 2-core machine it did not make the library's module compile faster either: benchmarks/README.md)
        cfg.parallel_compilation = False
        if winch:
            _bindings.wasmtime_config_strategy_set(cfg.ptr(), _STRATEGY_WINCH)
        engine = wasmtime.Engine(cfg)
        cls.ticking = [*cls.ticking, engine]
        if len(cls.ticking) == 1:
            threading.Thread(target=_tick, name="wasm-epoch", daemon=True).start()
        return engine


def _tick() -> None:
    increment = _bindings._wasmtime_engine_increment_epoch
    while True:
        time.sleep(TICK_S)
        for engine in _Engine.ticking:
            increment(engine.ptr())


# set inside `load_check()`: `engine()` and `compile_policy` then use the Winch engine (per thread
# and per task, so evaluations elsewhere in the process never see it)
_checking: contextvars.ContextVar[bool] = contextvars.ContextVar("wasm_load_check", default=False)


@contextlib.contextmanager
def load_check() -> Iterator[None]:
    """Policies loaded in this block are compiled by Winch on an engine of their own, and their
    instances live on it wherever they are made later: a fast proof that the module loads, and what
    a revision serves on until the serving engine's compile is ready (`WasmEvaluator.load`)."""
    token = _checking.set(True)
    try:
        yield
    finally:
        _checking.reset(token)


def engine() -> wasmtime.Engine:
    """The serving engine (inside `load_check()`: the check's)."""
    return _Engine.get_check() if _checking.get() else _Engine.get()


def compiled_for_serving(wasm: bytes, disk_cache: Path | None = None) -> bool:
    """Whether the serving engine's module for `wasm` is at hand (in memory, or in `disk_cache`),
    so that loading it costs no compile."""
    digest = hashlib.sha256(wasm).digest()
    with _compiled_lock:
        if digest in _compiled:
            return True
    return disk_cache is not None and _disk_path(disk_cache, digest, fuel=True).is_file()


def fuel_free_engine() -> wasmtime.Engine:
    """The fuel-free lane's engine: the serving engine's settings without fuel."""
    return _Engine.get_free()


def in_load_check() -> bool:
    return _checking.get()


_compiled: OrderedDict[bytes, wasmtime.Module] = OrderedDict()
_compiled_lock = threading.Lock()


def compile_policy(wasm: bytes, disk_cache: Path | None = None, *, fuel: bool = True) -> wasmtime.Module:
    """The compiled module for `wasm`: from memory, from `disk_cache` (a directory only this
    process's owner can write: a compiled module is native code), or compiled now. Inside
    `load_check()`: compiled by Winch on the check's engine, kept in memory only (the evaluator
    serves on it while the serving engine compiles the same bytes). `fuel=False`: for the fuel-free
    engine (kept apart: a module runs only on the engine that compiled it)."""
    digest = hashlib.sha256(wasm).digest()
    checking = _checking.get()
    key = digest + b"/winch" if checking else digest if fuel else digest + b"/fuel-free"
    with _compiled_lock:
        mod = _compiled.get(key)
        if mod is not None:
            _compiled.move_to_end(key)
            return mod
    eng = _Engine.get_check() if checking else _Engine.get() if fuel else _Engine.get_free()
    path = None if disk_cache is None or checking else _disk_path(disk_cache, digest, fuel)
    mod = _load_compiled(path, eng) if path is not None else None
    if mod is None:
        mod = _new_module(eng, wasm)
        if path is not None:
            _store_compiled(path, mod)
    with _compiled_lock:
        _compiled[key] = mod
        while len(_compiled) > COMPILED_CACHE_SIZE:
            _compiled.popitem(last=False)
    return mod


def save_compiled(wasm: bytes, directory: Path) -> Path:
    """The serving engine's module for `wasm` written into `directory` as `compile_policy` finds it
    there (compiled now if this process has not compiled it yet): so another process of this host
    that loads the same module with that `disk_cache` compiles nothing. Its path."""
    path = _disk_path(directory, hashlib.sha256(wasm).digest(), fuel=True)
    if not path.is_file():
        _store_compiled(path, compile_policy(wasm))  # from memory when this process compiled it
    return path


def _new_module(engine: wasmtime.Engine, wasm: bytes) -> wasmtime.Module:
    try:
        return wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as exc:
        raise BundleLoadError(f"policy.wasm: not a valid wasm module: {exc}") from None


# wasmtime checks a serialized module against its engine; the tag keeps files of other wasmtime
# versions or engine settings apart, so they are not tried (and rewritten) in turn
_ENGINE_TAG = hashlib.sha256(f"{version('wasmtime')}/{TICK_S}/speed/fixed-memory/fuel".encode()).hexdigest()[:12]
_FREE_TAG = hashlib.sha256(f"{version('wasmtime')}/{TICK_S}/speed/fixed-memory/no-fuel".encode()).hexdigest()[:12]


def _disk_path(disk_cache: Path, digest: bytes, fuel: bool) -> Path:
    return disk_cache / f"{digest.hex()}-{_ENGINE_TAG if fuel else _FREE_TAG}.cwasm"


def _load_compiled(path: Path, eng: wasmtime.Engine) -> wasmtime.Module | None:
    if not path.is_file():
        return None
    try:
        return wasmtime.Module.deserialize_file(eng, str(path))
    except wasmtime.WasmtimeError:
        path.unlink(missing_ok=True)  # from another engine or damaged: compile it again
        return None


def _store_compiled(path: Path, mod: wasmtime.Module) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(mod.serialize())
        tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    except OSError:
        pass  # a cache that cannot be written only costs the next process a compilation


def _after_fork_in_child() -> None:
    # the ticker thread does not survive fork(): a child starts over with its own engine and ticker
    # (policies loaded before the fork keep working in the child, but without deadlines: reload them)
    global _compiled_lock
    _Engine.engine = _Engine.check = _Engine.free = None
    _Engine.ticking = []
    _Engine.lock = threading.Lock()
    _compiled_lock = threading.Lock()
    _compiled.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
