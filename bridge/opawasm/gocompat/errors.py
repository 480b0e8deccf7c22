"""The one error the Go ports raise."""

from __future__ import annotations


class GoError(ValueError):
    """What the ported Go function would have returned as its `error`; the message is Go's."""


class Unsupported(Exception):
    """The input needs a part of the Go behaviour this port does not implement. Never a
    `GoError`: the caller must fail the evaluation rather than answer as if Go had rejected it."""


class TooLarge(Exception):
    """The output would outgrow the caller's limit (`nbytes`, at least): Go would build it, the
    host refuses to, so the caller can fail with its own memory error before allocating."""

    def __init__(self, nbytes: int) -> None:
        super().__init__(f"output of at least {nbytes} bytes")
        self.nbytes = nbytes
