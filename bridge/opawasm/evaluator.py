"""The hot-swappable `WasmEvaluator` the control plane holds: the current policy revision.

Only a fully loaded revision is ever published, by one reference assignment (atomic under the
GIL): evaluations that started on the old revision finish on it; the old pool is closed so its
instances are dropped as they come back.

A new module can be served before the serving engine has compiled it (`load(...,
baseline_first=True)`): Cranelift takes 1-3 s of a core on the policy library's module, Winch ~0.2 s
(nothing at all after a policy write's load check, which kept its module), and Winch's code runs
the library ~1.5x slower. The revision is published on Winch's code at once; Cranelift compiles
the same bytes in a thread of its own at a low CPU priority (so a write's response, the agents
activating the same revision, and the evaluations being served come first) and the same revision
is published again on its code. Answers are the same on both: one module, one validator, the same
fuel and epochs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from bridge.opabundle.keys import VerificationKey
from bridge.opawasm.bundle import policy_from_files, policy_wasm, verified_files
from bridge.opawasm.engine import compiled_for_serving, load_check
from bridge.opawasm.errors import PoolClosed
from bridge.opawasm.host import HostConfig
from bridge.opawasm.options import LoadOptions, load_options
from bridge.opawasm.policy import WasmPolicy

log = logging.getLogger(__name__)
# the serving compile behind a revision served on Winch's code: idle CPU only, as the fuel-free
# lane's compile; at nice 10 a write's compile still running took CPU from the next write's stages
# (benchmarks/README.md, "The write's response without the serving compile")
SERVING_COMPILE_NICE = 19


class WasmEvaluator:
    """The current policy revision, swappable atomically. Thread-safe and asyncio-friendly."""

    def __init__(
        self, keys: Mapping[str, VerificationKey], options: LoadOptions | None = None, **overrides: Any
    ) -> None:
        self.keys = dict(keys)
        opts = load_options(options, overrides)
        # one HostConfig for every revision: what its owner sets on it applies to later loads too
        self.host = opts.host or HostConfig()
        self.options = dataclasses.replace(opts, host=self.host)
        self._policy: WasmPolicy | None = None
        self._swap_lock = threading.Lock()
        self._pins: dict[WasmPolicy, int] = {}  # revisions in use by `pinned` blocks: how many each
        self._retired: set[WasmPolicy] = set()  # replaced while pinned: closed when the last pin ends
        self._compiling: threading.Thread | None = None  # the latest serving compile behind a baseline load
        # how long revisions have been served on the baseline compiler's (slower) code, for /metrics:
        # the windows that ended, and when the open one began (monotonic; None: serving optimized code)
        self._baseline_s = 0.0
        self._baseline_since: float | None = None
        self.baseline_loads = 0  # revisions published on the baseline compiler's code first

    @property
    def policy(self) -> WasmPolicy:
        p = self._policy
        if p is None:
            raise PoolClosed("no policy bundle loaded")
        return p

    @property
    def revision(self) -> str | None:
        p = self._policy
        return None if p is None else p.revision

    @property
    def on_baseline(self) -> bool:
        """Whether the current revision runs on the baseline compiler's code (its serving compile
        still running, or failed)."""
        p = self._policy
        return p is not None and p.on_baseline

    @property
    def baseline_seconds(self) -> float:
        """Seconds, in all, that this evaluator has served a revision on the baseline compiler's code."""
        since = self._baseline_since
        return self._baseline_s + (0.0 if since is None else time.monotonic() - since)

    @property
    def pool_size(self) -> int | None:
        """Instances per revision (how many evaluations can run at once); None: the engine's default."""
        return self.options.pool_size

    def load(self, bundle: bytes, *, baseline_first: bool = False) -> WasmPolicy:
        """Verify, load and publish a new revision; on any error the current revision stays.

        `baseline_first`: a module the serving engine has not compiled yet is published on Winch's
        code now and on the serving engine's when its background compile ends (module docstring)."""
        files = verified_files(bundle, self.keys, self.options)
        if not baseline_first or compiled_for_serving(policy_wasm(files), self.options.module_cache):
            new = policy_from_files(files, self.options)
            self._publish(new, over=None)
            return new
        with load_check():
            new = policy_from_files(files, self.options)
        self._publish(new, over=None)
        thread = threading.Thread(target=self._serving_compile, args=(files, new), name="wasm-serving-compile",
                                  daemon=True)
        self._compiling = thread
        thread.start()
        return new

    def _publish(self, new: WasmPolicy, over: WasmPolicy | None) -> bool:
        """Make `new` the current revision (with `over`: only if `over` still is; else close `new`)."""
        with self._swap_lock:
            if over is not None and self._policy is not over:
                old: WasmPolicy | None = new  # replaced or closed meanwhile: nobody would evaluate on it
            else:
                old, self._policy = self._policy, new
                old = self._retire(old)
                self._baseline_window(new.on_baseline)
        if old is not None:
            old.close()
        return old is not new

    def _baseline_window(self, baseline: bool) -> None:
        """(Under the swap lock, at each publish.) Open or close the baseline-code window."""
        now = time.monotonic()
        if baseline:
            self.baseline_loads += 1
        if baseline and self._baseline_since is None:
            self._baseline_since = now
        elif not baseline and self._baseline_since is not None:
            self._baseline_s += now - self._baseline_since
            self._baseline_since = None

    def _serving_compile(self, files: dict[str, bytes], baseline: WasmPolicy) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: this thread's own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SERVING_COMPILE_NICE)
        try:
            compiled = policy_from_files(files, self.options)
        except Exception as exc:  # noqa: BLE001 - Winch loaded the same bytes: only the platform can refuse
            log.warning("wasm revision %s: stays on the baseline compiler's code: %s", baseline.revision, exc)
            return
        if self._publish(compiled, over=baseline):
            log.info("wasm revision %s: now on the serving compiler's code", compiled.revision)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for the latest background serving compile (if any) to end; whether none is running."""
        thread = self._compiling
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _retire(self, old: WasmPolicy | None) -> WasmPolicy | None:
        """(Under the swap lock.) `old` if it can be closed now; None if a pin keeps it open."""
        if old is not None and old in self._pins:
            self._retired.add(old)
            return None
        return old

    @contextlib.contextmanager
    def pinned(self) -> Iterator[WasmPolicy | WasmEvaluator]:
        """The current revision, kept open until the block ends even when a newer one is loaded
        meanwhile: every evaluation of one request sees the same revision. With no revision loaded
        it yields the evaluator itself, whose evaluations then fail with PoolClosed."""
        with self._swap_lock:
            p = self._policy
            if p is not None:
                self._pins[p] = self._pins.get(p, 0) + 1
        if p is None:
            yield self
            return
        try:
            yield p
        finally:
            with self._swap_lock:
                left = self._pins[p] - 1
                if left:
                    self._pins[p] = left
                    p = None
                else:
                    del self._pins[p]
                    if p in self._retired:
                        self._retired.discard(p)
                    else:
                        p = None
            if p is not None:
                p.close()

    def evaluate(self, entrypoint: str | int, input: Any = None, *, timeout: float | None = None,
                 inline: bool | int = False) -> Any:
        p = self.policy
        try:
            return p.evaluate(entrypoint, input, timeout=timeout, inline=inline)
        except PoolClosed:
            # swapped between reading the reference and acquiring an instance: use the new revision
            if self._policy is p or self._policy is None:
                raise
            return self.policy.evaluate(entrypoint, input, timeout=timeout, inline=inline)

    def evaluate_raw(
        self, entrypoint: str | int, input_json: bytes | None, *, timeout: float | None = None, inline: bool = False
    ) -> bytes:
        p = self.policy
        try:
            return p.evaluate_raw(entrypoint, input_json, timeout=timeout, inline=inline)
        except PoolClosed:
            if self._policy is p or self._policy is None:
                raise
            return self.policy.evaluate_raw(entrypoint, input_json, timeout=timeout, inline=inline)

    async def evaluate_async(self, entrypoint: str | int, input: Any = None, *, timeout: float | None = None) -> Any:
        p = self.policy
        try:
            return await p.evaluate_async(entrypoint, input, timeout=timeout)
        except PoolClosed:
            if self._policy is p or self._policy is None:
                raise
            return await self.policy.evaluate_async(entrypoint, input, timeout=timeout)

    def close(self) -> None:
        with self._swap_lock:
            old, self._policy = self._policy, None
            old = self._retire(old)
            self._baseline_window(False)
        if old is not None:
            old.close()
