"""A loaded policy revision: compiled module, base data, entrypoints, builtin table, instance pool."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import wasmtime

from bridge.opawasm import memimage, sendmemo
from bridge.opawasm.builtins import REGISTRY, EvalContext, provided
from bridge.opawasm.engine import RUNAWAY_FUEL_PER_S, compile_policy, deadline_ticks, engine, in_load_check
from bridge.opawasm.errors import (
    BuiltinError,
    BundleLoadError,
    DeadlineExceeded,
    EvaluationError,
    HaltError,
    InlineBudgetExceeded,
    InvalidInput,
    MissingBuiltinsError,
    OutOfMemory,
    UnknownEntrypointError,
    WasmError,
)
from bridge.opawasm.guestvalues import read_value
from bridge.opawasm.host import HostConfig
from bridge.opawasm.hostcall import put_value, start_evaluation
from bridge.opawasm.hostroute import host_name, original_name
from bridge.opawasm.lanes import FuelFreeLane
from bridge.opawasm.memimage import MemoryImage
from bridge.opawasm.options import LoadOptions, load_options
from bridge.opawasm.pool import InstancePool
from bridge.opawasm.runtime import Instance
from bridge.opawasm.values import UNDEFINED, decode_value, encode_json, to_json

log = logging.getLogger("groqpolicy.wasm")
_encode = msgspec.json.encode
_decode = msgspec.json.decode
_time_ns = time.time_ns
_monotonic = time.monotonic

# builtins that wait on the network: a policy using one is evaluated in a worker thread by evaluate_async
BLOCKING_BUILTINS = ("http.send", "net.lookup_ip_addr")
# The inline budget (`inline=True`): about a millisecond on this machine's cores. Wasm instructions
# are counted (fuel: the same policy and input fit or not under any load); host builtins, which
# fuel does not see, are held to a clock. Measured in benchmarks/README.md (the event loop).
INLINE_FUEL = 3_000_000  # ~0.75 ms: ~4 million per ms measured on a long loop
INLINE_HOST_S = 0.001


def _native_glob_id(ids: Mapping[str, int], table: Mapping[str, Any]) -> int:
    """glob.match's builtin id, for the native fast path (`hostfast`) to answer where it can; -1
    where the module does not call it or a custom builtin took its place (that one is always called)."""
    name = host_name("glob.match")
    return ids.get(name, -1) if table.get(name) is REGISTRY.get(name) else -1


class WasmPolicy:
    """One immutable policy revision. `evaluate` is thread-safe; instances come from a pool."""

    def __init__(
        self,
        wasm: bytes,
        data: bytes | Mapping[str, Any] | None = None,
        options: LoadOptions | None = None,
        *,
        revision: str = "",
        manifest_entrypoints: list[str] | None = None,
        **overrides: Any,
    ) -> None:
        self.options = opts = load_options(options, overrides)
        self.host = opts.host or HostConfig()
        # like `opa eval --strict-builtin-errors`: a builtin error fails the evaluation with
        # topdown's message ("<builtin>: <error>") instead of making the call undefined
        self.strict_builtin_errors = opts.strict_builtin_errors
        self.memory_limit = opts.memory_limit
        self.timeout = opts.timeout
        self._ticks = deadline_ticks(opts.timeout)
        self.revision = revision
        self._data = None if data is None else bytes(data) if isinstance(data, (bytes, bytearray)) else _encode(data)
        # a policy loaded inside `load_check()` lives on Winch's engine, its later instances too
        self._engine = engine() if in_load_check() else None
        self.module = compile_policy(wasm, opts.module_cache)
        first = self._new_instance()
        self.abi = first.abi
        self.builtin_ids: dict[str, int] = first.dump_json(first.call("builtins"))
        table = {**REGISTRY, **opts.custom_builtins}
        missing = [n for n in self.builtin_ids if n not in provided() and n not in opts.custom_builtins]
        if missing:
            raise MissingBuiltinsError(missing)
        # a builtin routed to the host (`hostroute`) reports errors under its Rego name, as topdown does
        self._table: dict[int, tuple[str, Any]] = {i: (original_name(n), table[n]) for n, i in self.builtin_ids.items()}
        # http.send's id where the host keeps a memo of its answers (a replay's), else none
        self._memo_id = self.builtin_ids.get("http.send", -1) if self.host.send_memo is not None else -1
        self._interned: dict[int, str] = {}  # the module's string constants by address (guestvalues)
        ids: dict[str, int] = first.dump_json(first.call("entrypoints"))
        if manifest_entrypoints:
            unknown = [e for e in manifest_entrypoints if e not in ids]
            if unknown:
                raise BundleLoadError(f".manifest: entrypoints not compiled into policy.wasm: {', '.join(unknown)}")
        self.entrypoints = dict(ids)
        self._ep_lookup: dict[str, int] = {}
        for name, i in ids.items():
            self._ep_lookup[name] = i
            self._ep_lookup["data." + name.replace("/", ".")] = i
            self._ep_lookup[name.replace("/", ".")] = i
        memimage.setup(first, self._data)
        self._glob_id = _native_glob_id(self.builtin_ids, table) if opts.native_hostcalls else -1
        first.arm_fast_paths(self._glob_id)
        self.image: MemoryImage | None = None
        if opts.share_data:
            first = self._share(wasm, first)
        size = opts.pool_size or max(2, (os.cpu_count() or 2) * 2)
        self.pool: InstancePool[Instance] = InstancePool(self._new_ready_instance, size)
        self.pool_size = size  # how many evaluations can run at once
        self.pool.prime(first)
        self.lane: FuelFreeLane | None = None
        if opts.fuel_free_lane and not self.may_block and not in_load_check():
            self.lane = FuelFreeLane(wasm, opts.module_cache, size, self._new_ready_instance)

    # -- instances --------------------------------------------------------------------------

    def _new_instance(self, fuel_free: wasmtime.Module | None = None) -> Instance:
        return Instance(
            fuel_free or self.module, memory_limit=self.memory_limit, dispatch=self._dispatch,
            on_print=self.host.print_line, fuel=fuel_free is None, on=None if fuel_free else self._engine,
        )

    def _share(self, wasm: bytes, first: Instance) -> Instance:
        """Take the memory image of the set-up `first` instance, and its successor made from it.
        Where the host cannot map it (it was checked just now, so that is the platform's doing),
        every instance parses `data` as before, and the revision still loads."""
        why = memimage.supported(wasm)
        if why is None:
            self.image = memimage.capture(first)
            try:
                successor = self._new_ready_instance()
            except BundleLoadError as exc:
                self.image.close()
                self.image, why = None, str(exc)
            else:
                self._data = None  # the image holds it, parsed
                first.close()
                return successor
        log.warning("policy %s: each instance parses its own data: %s", self.revision or "(no revision)", why)
        return first

    def _new_ready_instance(self, fuel_free: wasmtime.Module | None = None) -> Instance:
        inst = self._new_instance(fuel_free)
        try:
            if self.image is not None:
                memimage.restore(self.image, inst)
            else:
                memimage.setup(inst, self._data)
        except BaseException:
            inst.close()
            raise
        inst.arm_fast_paths(self._glob_id)
        return inst

    def _dispatch(self, inst: Instance, builtin_id: int, arg_addrs: tuple[int, ...]) -> int:
        name, fn = self._table[builtin_id]
        ctx = inst.ctx
        if ctx is None:  # the evaluation's first host call
            ctx = inst.ctx = EvalContext(inst.start_ns, inst.deadline, inst.host or self.host, inst.memory_limit)
            start_evaluation(inst)
        ctx.check_deadline()
        memo, key = self.host.send_memo, b""
        if builtin_id == self._memo_id and memo is not None:
            key = sendmemo.request_text(inst, arg_addrs[0])
            if found := sendmemo.answered(inst, ctx, memo, key):
                return found
        interned = self._interned
        args = [read_value(inst, a, interned) for a in arg_addrs]
        try:
            out = fn(ctx, *args)
        except (WasmError, HaltError):
            raise
        except (BuiltinError, TypeError, ValueError, OverflowError, ArithmeticError) as exc:
            # topdown: a builtin's (operand) error is not fatal outside strict mode; the call is
            # undefined. Anything else (KeyError, AttributeError, ...) would be a bug in the host
            # builtin: it fails the evaluation instead, so a bug can never turn into "undefined"
            # and silently skip a deny rule.
            msg = f"{name}: {exc}"
            ctx.errors.append(msg)
            if self.strict_builtin_errors:
                raise HaltError(msg) from None
            return 0
        ctx.check_deadline()
        if out is UNDEFINED:
            return 0
        addr = put_value(inst, out)
        if key and memo is not None:
            sendmemo.learn(ctx, memo, key, args[0], out, addr)
        return addr

    # -- evaluation -------------------------------------------------------------------------

    def entrypoint_id(self, entrypoint: str | int) -> int:
        if isinstance(entrypoint, int):
            if entrypoint not in self.entrypoints.values():
                raise UnknownEntrypointError(f"entrypoint id {entrypoint}: not in this policy")
            return entrypoint
        try:
            return self._ep_lookup[entrypoint]
        except KeyError:
            raise UnknownEntrypointError(
                f"entrypoint {entrypoint!r}: not in this policy (have: {', '.join(sorted(self.entrypoints))})"
            ) from None

    def _eval_value_text(self, entrypoint: str | int, input_json: bytes | None, timeout: float | None,
                         inline: bool | int) -> bytes:
        """The result set in OPA's value format: `{{"result": <value>}}`, or `set()` when undefined.

        `inline`: within the inline budget, on an idle instance or a new one if the pool has room
        (after an overrun dropped one), never waiting for one; else InlineBudgetExceeded."""
        ep = self._ep_lookup[entrypoint] if entrypoint in self._ep_lookup else self.entrypoint_id(entrypoint)
        if timeout is None:
            t, ticks = self.timeout, self._ticks
        else:
            t, ticks = timeout, deadline_ticks(timeout)
        if not inline and (lane := self.lane) is not None:
            if (free := lane.pool) is None:
                lane.start()  # compiled on first demand, in the background; meanwhile the fuel lane
            else:
                inst = free.acquire()
                printed: list[str] = []  # held until this run's answer stands (an OOM runs again)
                inst.on_print = printed.append
                inst.host = dataclasses.replace(self.host, on_print=printed.append)
                try:
                    out = self._run(inst, ep, input_json, timeout, t, ticks, 0)
                except OutOfMemory:
                    # fuel tells a runaway from a big evaluation: the fuel lane answers, with the
                    # whole deadline, so the answer does not depend on how long this run took (lanes.py);
                    # its prints are that run's
                    pass
                except BaseException:
                    self._printed(printed)
                    raise
                else:
                    self._printed(printed)
                    return out
                finally:
                    inst.on_print, inst.host = self.host.print_line, None
                    free.release(inst)
        if not inline:
            inst = self.pool.acquire()
        elif (idle := self.pool.acquire_nowait()) is not None:
            inst, t = idle, min(t, INLINE_HOST_S * int(inline))
        else:
            raise InlineBudgetExceeded("no policy instance free for an inline evaluation")
        try:
            return self._run(inst, ep, input_json, timeout, t, ticks, inline)
        except DeadlineExceeded:
            if inline:  # the host builtins' share of the inline budget ran out, not the deadline
                raise InlineBudgetExceeded(f"host builtins took more than the inline budget ({INLINE_HOST_S * 1000:g} ms)") from None
            raise
        finally:
            self.pool.release(inst)

    def _printed(self, lines: list[str]) -> None:
        for line in lines:
            self.host.print_line(line)

    def _run(self, inst: Instance, ep: int, input_json: bytes | None, timeout: float | None, t: float, ticks: int,
             inline: bool | int) -> bytes:
        inst.ctx = None
        inst.runaway_fuel = int((timeout or self.timeout) * RUNAWAY_FUEL_PER_S)
        inst.start_ns = _time_ns()
        inst.deadline = _monotonic() + t
        return inst.evaluate_raw(ep, input_json, ticks, INLINE_FUEL * int(inline))

    def evaluate_raw(
        self, entrypoint: str | int, input_json: bytes | None, *, timeout: float | None = None, inline: bool | int = False
    ) -> bytes:
        """Evaluate JSON input bytes; return OPA's JSON result set, `[{"result":...}]` or `[]` when undefined."""
        raw = self._eval_value_text(entrypoint, input_json, timeout, inline)
        value = _result_text(raw)
        if value is None:
            return b"[]"
        try:
            _decode(value)
        except msgspec.ValidationError:
            pass  # a number beyond float64: valid JSON as the module printed it
        except msgspec.DecodeError:
            value = encode_json(_json_view(value))
        return b'[{"result":' + value + b"}]"

    def evaluate(self, entrypoint: str | int, input: Any = None, *, timeout: float | None = None,
                 inline: bool | int = False) -> Any:
        """The entrypoint's value, or `UNDEFINED`. Raises `EvaluationError` subclasses on failure;
        with `inline`, InlineBudgetExceeded when it does not fit the inline budget (`inline=n`: n
        budgets, for one call that evaluates n inputs at once)."""
        raw = self._eval_value_text(entrypoint, None if input is None else _input_json(input), timeout, inline)
        value = _result_text(raw)
        if value is None:
            return UNDEFINED
        try:
            return _decode(value)
        except msgspec.DecodeError:
            # a set, a non-string key or a number beyond float64 somewhere: Rego value syntax
            return _json_view(value)

    async def evaluate_async(self, entrypoint: str | int, input: Any = None, *, timeout: float | None = None) -> Any:
        """Inline when the policy cannot block and the evaluation fits the inline budget (about a
        millisecond); otherwise in a worker thread, so neither http.send, a long evaluation nor a
        busy pool ever blocks the loop for longer."""
        if not self.may_block:
            try:
                return self.evaluate(entrypoint, input, timeout=timeout, inline=True)
            except InlineBudgetExceeded:
                pass
        return await asyncio.to_thread(self.evaluate, entrypoint, input, timeout=timeout)

    @property
    def on_baseline(self) -> bool:
        """Whether this policy runs Winch's code (loaded inside `load_check()`)."""
        return self._engine is not None

    @property
    def may_block(self) -> bool:
        return any(b in self.builtin_ids for b in BLOCKING_BUILTINS)

    def close(self) -> None:
        if self.lane is not None:
            self.lane.close()
        self.pool.close()
        if self.image is not None:
            # now, not when the collector finds this revision: in-flight instances keep their mappings
            self.image.close()


def _input_json(value: Any) -> bytes:
    try:
        return _encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input: not a JSON value: {exc}") from None


def _json_view(text: bytes) -> Any:
    """The JSON view of a result in value syntax; a result the host cannot read fails the
    evaluation (an `EvaluationError`), it never escapes as another exception."""
    try:
        return to_json(decode_value(text))
    except (ValueError, TypeError, RecursionError, msgspec.MsgspecError) as exc:
        raise EvaluationError(f"the policy's result could not be read: {type(exc).__name__}: {exc}") from None


_PREFIX = b'{{"result": '


def _result_text(raw: bytes) -> bytes | None:
    """The value text out of a value-format result set (at most one `result` binding)."""
    if raw.startswith(_PREFIX) and raw.endswith(b"}}"):
        return raw[len(_PREFIX) : -2]
    if raw == b"set()":
        return None
    raise EvaluationError(f"opa_eval returned an unexpected result set: {raw[:200]!r}")
