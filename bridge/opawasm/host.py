"""What the host lends to a policy: the `http.send` transport, URL policy, runtime info, print sink,
and for a replay the memo of `http.send` answers (`SendMemo`).

`http.send` to the bridge URL never becomes an HTTP request: the gateway contract is
`POST {bridge_url}/v1/infer/{tier}` with a JSON body, and the gateway's only job is to turn that
into a NATS request on `groq.infer.<tier>`. So the evaluator calls an injected `InferTransport`
(the NATS client in production) directly with `(tier, body, timeout)`. Every other URL is refused
unless it matches `allowed_url_prefixes`, and then goes through `http_transport`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("groqpolicy.wasm")


class InferTransport(Protocol):
    """Bridge inference call: `groq.infer.<tier>` request-reply. Returns the reply's JSON body
    and an HTTP-like status code (200 on success)."""

    def __call__(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]: ...


class HTTPTransport(Protocol):
    """Plain HTTP for allowed non-bridge URLs: returns (status, headers, body bytes)."""

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float
    ) -> tuple[int, Mapping[str, str], bytes]: ...


def httpx_transport(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float
) -> tuple[int, Mapping[str, str], bytes]:
    # imported here: most hosts never send to a non-bridge URL, and httpx is slow to import
    import httpx

    r = httpx.request(method, url, headers=dict(headers), content=body, timeout=timeout)
    return r.status_code, dict(r.headers), r.content


class SendMemo:
    """`http.send` answers to the bridge kept by the request's own text, for a host whose transport
    gives a request the same answer every time it answers it with 200 (a replay's: recorded
    judgments, and ones asked once and then kept). The key is the guest's `opa_value_dump` of the
    request object, so a hit costs one dump, a lookup and one `opa_value_parse` of the kept
    response (`sendmemo`), where a call reads the request out of guest memory, keys it, asks the
    transport and writes the response back. Learnt on the first 200 answer of each request text;
    anything else goes the normal way every time. Thread-safe: one memo serves a pool's instances."""

    def __init__(self) -> None:
        self._answers: dict[bytes, bytes] = {}  # request text -> the response in value text
        self._lock = threading.Lock()
        self.hits = 0  # calls answered from the memo (a repeat within one evaluation is not a call)

    def get(self, request: bytes) -> bytes | None:
        found = self._answers.get(request)
        if found is not None:
            with self._lock:
                self.hits += 1
        return found

    def keep(self, request: bytes, response: bytes) -> None:
        self._answers[request] = response


@dataclass
class HostConfig:
    bridge_url: str | None = None
    infer_transport: InferTransport | None = None
    allowed_url_prefixes: tuple[str, ...] = ()
    http_transport: HTTPTransport | None = httpx_transport
    http_default_timeout: float = 5.0
    runtime: Mapping[str, Any] = field(default_factory=dict)
    on_print: Callable[[str], None] | None = None
    send_memo: SendMemo | None = None  # http.send answers to the bridge kept by request (a replay's)

    def print_line(self, text: str) -> None:
        if self.on_print is not None:
            self.on_print(text)
        else:
            log.info("policy print: %s", text)
