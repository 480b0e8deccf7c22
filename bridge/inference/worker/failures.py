"""What a failed model call means: retry it or not, count it against the model's breaker or not
(the failure table in `bridge.inference.worker.engine`'s docstring), and what a call cost."""

from __future__ import annotations

import groq
import httpx
from groq.types.chat import ChatCompletion

from bridge.inference.catalog import ModelSpec
from bridge.inference.wire import Usage


class ModelFailure(Exception):
    def __init__(self, model: str, what: str, *, retry: bool, breaker: bool, wait_s: float | None = None) -> None:
        super().__init__(f"{model}: {what}")
        self.retry, self.breaker, self.wait_s = retry, breaker, wait_s


def _retry_after(err: groq.APIStatusError) -> float | None:
    h = err.response.headers
    try:
        if (ms := h.get("retry-after-ms")) is not None:
            return float(ms) / 1000
        if (s := h.get("retry-after")) is not None:
            return float(s)
    except ValueError:
        return None
    return None


def failure_of(model: str, exc: groq.APIError, timeout: float) -> ModelFailure:
    """What a failed call means for retries and the breaker (the table in this module's docstring)."""
    if isinstance(exc, groq.RateLimitError):
        return ModelFailure(model, "429 rate limited", retry=True, breaker=True, wait_s=_retry_after(exc))
    if isinstance(exc, groq.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return ModelFailure(model, f"timed out after {timeout:.3g}s", retry=False, breaker=True)
    if isinstance(exc, groq.APIConnectionError) and isinstance(exc.__cause__, httpx.RemoteProtocolError):
        # the server closed a shared connection (an HTTP/2 GOAWAY while the model's streams were in
        # flight): every stream on it fails at once, which says nothing about the model's health
        return ModelFailure(model, f"connection closed by the server: {exc.__cause__}", retry=True, breaker=False)
    if isinstance(exc, groq.APIConnectionError):
        return ModelFailure(model, f"connection error: {exc}", retry=True, breaker=True)
    if not isinstance(exc, groq.APIStatusError):  # a response the SDK could not read
        return ModelFailure(model, f"unusable response: {exc}", retry=False, breaker=True)
    code = exc.status_code
    if code == 498:  # capacity, not a broken model
        return ModelFailure(model, "498 flex capacity exceeded", retry=False, breaker=False)
    if code >= 500 or code in (408, 409):
        return ModelFailure(model, f"{code} server error", retry=True, breaker=True)
    detail = exc.body.get("error", {}).get("code", "") if isinstance(exc.body, dict) else ""
    return ModelFailure(model, f"{code} {detail}".strip(), retry=False, breaker=True)


def usage_of(completion: ChatCompletion, spec: ModelSpec) -> Usage:
    u = completion.usage
    if u is None:
        return Usage()
    return Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens, total_tokens=u.total_tokens,
                 queue_time=u.queue_time or 0.0, prompt_time=u.prompt_time or 0.0,
                 completion_time=u.completion_time or 0.0, total_time=u.total_time or 0.0,
                 cost_usd=round(spec.cost_usd(u.prompt_tokens, u.completion_tokens), 9))
