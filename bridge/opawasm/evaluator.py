"""The hot-swappable `WasmEvaluator` the control plane holds: the current policy revision.

Only a fully loaded revision is ever published, by one reference assignment (atomic under the
GIL): evaluations that started on the old revision finish on it; the old pool is closed so its
instances are dropped as they come back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from bridge.opabundle.keys import VerificationKey
from bridge.opawasm.bundle import load_bundle
from bridge.opawasm.errors import PoolClosed
from bridge.opawasm.host import HostConfig
from bridge.opawasm.options import LoadOptions, load_options
from bridge.opawasm.policy import WasmPolicy


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
    def pool_size(self) -> int | None:
        """Instances per revision (how many evaluations can run at once); None: the engine's default."""
        return self.options.pool_size

    def load(self, bundle: bytes) -> WasmPolicy:
        """Verify, load and publish a new revision; on any error the current revision stays."""
        new = load_bundle(bundle, self.keys, self.options)
        with self._swap_lock:
            old, self._policy = self._policy, new
            old = self._retire(old)
        if old is not None:
            old.close()
        return new

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
        if old is not None:
            old.close()
