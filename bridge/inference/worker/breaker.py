"""Per-model circuit breaker.

    closed --(failure_threshold consecutive failures)--> open
    open   --(reset_timeout_s elapsed; next caller is the probe)--> half_open
    half_open --probe succeeds--> closed ; --probe fails--> open (timer restarts)

While open (and while a half-open probe is in flight) `allow()` is False and callers fall back
to the next model instead of waiting: a dead model costs nothing after it is found dead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, reset_timeout_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.clock = clock
        self._state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_out = False
        self.transitions: list[str] = []

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self.opened_at >= self.reset_timeout_s:
            return HALF_OPEN
        return self._state

    def _move(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.transitions.append(state)

    def allow(self) -> bool:
        """May a call go out now? In half-open exactly one caller (the probe) gets True."""
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            if self.clock() - self.opened_at < self.reset_timeout_s:
                return False
            self._move(HALF_OPEN)
            self._probe_out = False
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def record_success(self) -> None:
        self.failures = 0
        self._probe_out = False
        self._move(CLOSED)

    def record_failure(self) -> None:
        self.failures += 1
        if self._state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            self._probe_out = False
            self._move(OPEN)

    def release_probe(self) -> None:
        """The probe ended without telling us anything about the model (e.g. a 498): let another try."""
        self._probe_out = False

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state, "failures": self.failures}
