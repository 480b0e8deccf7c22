"""A bounded, thread-safe pool of policy instances.

Instances are created lazily up to `size`; an instance whose last evaluation trapped, aborted,
overran its deadline or ran out of memory is dropped on release (never reused) and its slot freed,
so the next caller gets a fresh one. A closed pool (an old bundle revision after a hot swap)
lets in-flight evaluations finish and drops their instances when they come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from bridge.opawasm.errors import PoolClosed, PoolExhausted


class _Poolable(Protocol):
    broken: str | None


def _close(inst: object) -> None:
    close = getattr(inst, "close", None)
    if close is not None:
        close()


T = TypeVar("T", bound=_Poolable)


class InstancePool(Generic[T]):
    def __init__(self, factory: Callable[[], T], size: int, *, acquire_timeout: float = 10.0) -> None:
        if size < 1:
            raise ValueError("pool size must be >= 1")
        self._factory = factory
        self.size = size
        self.acquire_timeout = acquire_timeout
        self._idle: list[T] = []
        self._live = 0
        # the plain lock is the fast path (a C-level context manager); the condition is only
        # touched when somebody actually waits
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiters = 0
        self.closed = False
        self.discarded = 0

    def prime(self, inst: T) -> None:
        with self._cond:
            self._live += 1
            self._idle.append(inst)

    def acquire_nowait(self) -> T | None:
        """An idle instance, a new one when the pool has room (made on this thread), or None: never waits."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self.closed or self._live >= self.size:
                return None
            self._live += 1
        try:
            return self._factory()
        except BaseException:
            with self._lock:
                self._live -= 1
            raise

    def acquire(self, timeout: float | None = None) -> T:
        cond = self._cond
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self.closed:
                raise PoolClosed("instance pool is closed")
            end = None
            while not self._idle and self._live >= self.size:
                if self.closed:
                    raise PoolClosed("instance pool is closed")
                if end is None:
                    end = time.monotonic() + (self.acquire_timeout if timeout is None else timeout)
                left = end - time.monotonic()
                self._waiters += 1
                try:
                    woke = left > 0 and cond.wait(left)
                finally:
                    self._waiters -= 1
                if not woke:
                    if self._idle:
                        break
                    waited = self.acquire_timeout if timeout is None else timeout
                    raise PoolExhausted(f"no policy instance free within {waited}s (pool size {self.size})")
            if self._idle:
                return self._idle.pop()
            self._live += 1
        try:
            return self._factory()
        except BaseException:
            with self._lock:
                self._live -= 1
                if self._waiters:
                    cond.notify()
            raise

    def release(self, inst: T) -> None:
        drop = False
        with self._lock:
            if inst.broken is not None or self.closed:
                self._live -= 1
                drop = True
                if inst.broken is not None:
                    self.discarded += 1
            else:
                self._idle.append(inst)
            if self._waiters:
                self._cond.notify()
        if drop:
            _close(inst)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._live -= len(self._idle)
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for inst in idle:
            _close(inst)

    @property
    def live(self) -> int:
        return self._live
