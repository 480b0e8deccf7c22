"""What the host lends to a policy: the `http.send` transport, URL policy, runtime info, print sink.

`http.send` to the bridge URL never becomes an HTTP request: the gateway contract is
`POST {bridge_url}/v1/infer/{tier}` with a JSON body, and the gateway's only job is to turn that
into a NATS request on `groq.infer.<tier>`. So the evaluator calls an injected `InferTransport`
(the NATS client in production) directly with `(tier, body, timeout)`. Every other URL is refused
unless it matches `allowed_url_prefixes`, and then goes through `http_transport`.
"""

from __future__ import annotations

import logging
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


@dataclass
class HostConfig:
    bridge_url: str | None = None
    infer_transport: InferTransport | None = None
    allowed_url_prefixes: tuple[str, ...] = ()
    http_transport: HTTPTransport | None = httpx_transport
    http_default_timeout: float = 5.0
    runtime: Mapping[str, Any] = field(default_factory=dict)
    on_print: Callable[[str], None] | None = None

    def print_line(self, text: str) -> None:
        if self.on_print is not None:
            self.on_print(text)
        else:
            log.info("policy print: %s", text)
