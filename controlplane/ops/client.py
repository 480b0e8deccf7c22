"""A small HTTP client for the control plane's API, used by the CLI (and handy in scripts).

Every failure becomes a `ClientError` with one readable line and a hint: the CLI prints both and
exits non-zero. Two answers say that nothing of the request was done and when to come back: 429
(the rate limit, before any handler runs) and 503 `evaluation_saturated` (the evaluation lanes
refuse a request before any of it is decided). Those are asked again after their `Retry-After`, a
few times and for at most `RETRY_BUDGET_S` in all, before they are reported. Every other 503 (NATS
reconnecting, a full disk) may come after part of a write or an evaluation took place: asking again
could store a policy twice or pay for model calls twice, so it is reported at once. Token resolution: explicit, `$GROQPOLICY_TOKEN`, else the local `admin` token from
`<state_dir>/tokens` (what `make run` generates), so a developer on the same machine needs nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from bridge.kernel.config import ClientSettings
from bridge.kernel.errors import GroqPolicyError

RETRIES = 5
RETRY_BUDGET_S = 30.0  # the longest a call waits in all on Retry-After answers
RETRY_CAP_S = 5.0  # one wait, whatever the header says


NOT_STARTED = "evaluation_saturated"  # the one 503 code raised before any of the request ran


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds to wait before asking again, for an answer saying nothing was done; else None."""
    if resp.status_code == 503:
        try:
            code = resp.json().get("error", {}).get("code")
        except (ValueError, AttributeError):
            return None
        if code != NOT_STARTED:
            return None
    elif resp.status_code != 429:
        return None
    try:
        wait = float(resp.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: not a promise this client keeps
        return None
    return min(max(wait, 0.0), RETRY_CAP_S) if wait == wait else None  # NaN is no wait


class ClientError(GroqPolicyError):
    """A failure the CLI reports as one readable line plus a hint (what to do about it)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def local_token(state_dir: Path, name: str = "admin") -> str:
    """The named token from a local tokens file (`name=token:scopes` lines), or ""."""
    try:
        lines = (state_dir / "tokens").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        line = line.strip()
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].rsplit(":", 1)[0]
    return ""


def resolve_token(explicit: str | None, state_dir: Path) -> str:
    return explicit or ClientSettings.from_env().token or local_token(state_dir)


class ControlPlaneClient:
    def __init__(self, base_url: str, token: str = "", timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        waited = 0.0
        for attempt in range(RETRIES + 1):
            resp = self._request(method, path, **kwargs)
            wait = retry_after(resp)
            if wait is None or attempt == RETRIES or waited + wait > RETRY_BUDGET_S:
                break
            time.sleep(wait)
            waited += wait
        if resp.status_code >= 400:
            raise _error_from(resp, method, path)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            return resp.text

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise ClientError(f"cannot reach the control plane at {self.base_url}",
                              "start the system with `make run` (or `groqpolicy up`), or pass --url") from exc
        except httpx.TimeoutException as exc:
            raise ClientError(f"{method} {path}: no answer from {self.base_url} in time", "retry, or raise --timeout") from exc

    def raise_for(self, resp: httpx.Response, method: str, path: str) -> None:
        """The ClientError of an answer that is an error (a streamed call reads its own answer)."""
        raise _error_from(resp, method, path)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, json=body)


def _error_from(resp: httpx.Response, method: str, path: str) -> ClientError:
    try:
        err = resp.json().get("error", {})
        message = err.get("message") or resp.text
        details = err.get("messages") or []
    except (ValueError, AttributeError):
        message, details = resp.text.strip() or resp.reason_phrase, []
    located = "; ".join(
        f"{d.get('file', '')}:{d.get('row', 0)}:{d.get('col', 0)}: {d.get('message', '')}" for d in details[:3]
        if isinstance(d, dict)
    )
    text = f"{method} {path}: HTTP {resp.status_code}: {message}" + (f" ({located})" if located and located not in message else "")
    hints = {
        401: "pass --token or set GROQPOLICY_TOKEN (tokens of a local system are in <state>/tokens)",
        403: "this token lacks the scope the endpoint needs (admin for policy writes, evaluate for evaluations)",
        404: "check the id or name (`groqpolicy policies list`, `groqpolicy bundles`)",
        422: "fix the input as the message says",
        429: "slow down: the control plane rate-limits each client",
        503: "a dependency is down: check `groqpolicy up` output and the logs in <state>/logs",
    }
    hint = hints.get(resp.status_code, "")
    if retry_after(resp) is not None:
        hint = "the control plane is busy: asked again while it said to wait; retry later, or send smaller batches"
    return ClientError(" ".join(text.split()), hint)
