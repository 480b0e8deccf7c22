"""http.send (topdown http.go), routed by the host: the bridge URL goes straight to the injected
inference transport (NATS request-reply on `groq.infer.<tier>`), allowed URLs go through the
HTTP transport, everything else is refused. Always bounded by the evaluation deadline."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from bridge.opawasm.builtins.operands import type_name
from bridge.opawasm.builtins.registry import EvalContext, builtin
from bridge.opawasm.errors import BuiltinError, DeadlineExceeded, HaltError
from bridge.opawasm.gocompat.gotime import parse_duration
from bridge.opawasm.host import HostConfig
from bridge.opawasm.values import RegoSet, canonical_key, rego_repr, to_json

_ALLOWED_KEYS = {
    "method", "url", "body", "enable_redirect", "force_json_decode", "force_yaml_decode", "headers",
    "raw_body", "tls_use_system_certs", "tls_ca_cert", "tls_ca_cert_file", "tls_ca_cert_env_variable",
    "tls_client_cert", "tls_client_cert_file", "tls_client_cert_env_variable", "tls_client_key",
    "tls_client_key_file", "tls_client_key_env_variable", "tls_insecure_skip_verify", "tls_server_name",
    "timeout", "cache", "force_cache", "force_cache_duration_seconds", "raise_error", "caching_mode",
    "max_retry_attempts", "cache_ignored_headers",
}

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class _Refused(Exception):
    pass


# a policy spells its timeout as one literal ("2s") at every call: parsed once (a pure function;
# a refused spelling raises each time, lru_cache keeps no exception)
_duration_ns = functools.lru_cache(maxsize=64)(parse_duration)


def _timeout(req: Mapping[str, Any], ctx: EvalContext) -> float:
    t = req.get("timeout")
    secs = ctx.host.http_default_timeout
    if isinstance(t, str):
        secs = _duration_ns(t) / 1e9
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        secs = t / 1e9
    return max(0.0, min(secs, ctx.remaining()))


def _response(status: int, headers: Mapping[str, Any], raw: bytes, req: Mapping[str, Any]) -> dict[str, Any]:
    text = raw.decode("utf-8", "replace")
    hdrs: dict[str, list[str]] = {}
    for k, v in headers.items():
        hdrs.setdefault(k.lower(), []).extend(v if isinstance(v, list) else [str(v)])
    body: Any = None
    ctype = ",".join(hdrs.get("content-type", []))
    if raw and ("json" in ctype or req.get("force_json_decode")):
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
    return {"status": f"{status} {_REASONS.get(status, '')}".strip(), "status_code": status, "body": body,
            "raw_body": text, "headers": hdrs}


def _send(ctx: EvalContext, req: Mapping[str, Any]) -> dict[str, Any]:
    host = ctx.host
    url = req["url"]
    method = str(req.get("method", "")).upper()
    timeout = _timeout(req, ctx)
    if timeout <= 0:
        raise DeadlineExceeded("evaluation deadline exceeded before http.send")
    bridge = (host.bridge_url or "").rstrip("/")
    if bridge and url.startswith(bridge + "/v1/infer/"):
        if host.infer_transport is None:
            raise _Refused("http.send: bridge URL configured but no inference transport is attached")
        if method != "POST":
            raise _Refused(f"http.send: bridge inference requires POST, got {method}")
        tier = url[len(bridge) + len("/v1/infer/"):].split("?")[0].strip("/")
        if "raw_body" in req:
            body = msgspec.json.decode(str(req["raw_body"]).encode())
        else:
            body = to_json(req.get("body"))
        started = time.monotonic()
        status, reply = host.infer_transport(tier, body, timeout)
        if time.monotonic() - started > timeout and ctx.remaining() <= 0:
            raise HaltError(f"http.send: timed out ({timeout:.3f}s)")
        raw = msgspec.json.encode(reply)
        return _response(status, {"content-type": ["application/json"]}, raw, req)
    if not any(url.startswith(p) for p in host.allowed_url_prefixes):
        raise _Refused(f"http.send: url not allowed by host configuration: {url}")
    if host.http_transport is None:
        raise _Refused("http.send: no HTTP transport configured")
    headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
    data: bytes | None = None
    if "raw_body" in req:
        data = str(req["raw_body"]).encode()
    elif "body" in req:
        data = msgspec.json.encode(to_json(req["body"]))
        headers.setdefault("Content-Type", "application/json")
    status, rh, raw = host.http_transport(method, url, headers, data, timeout)
    return _response(status, rh, raw, req)


def memoizable(host: HostConfig, req: Any, resp: Any) -> bool:
    """Whether a call's response may be kept by the host's `SendMemo`: an answer of the bridge's
    inference transport with status 200 and a reply object (the memo's contract: its transport
    answers a request that way every time; a 200 whose reply does not read is a failure the
    replay's oracle asks again, so it is never kept)."""
    bridge = (host.bridge_url or "").rstrip("/")
    return (bool(bridge) and host.infer_transport is not None and isinstance(req, dict)
            and str(req.get("url", "")).startswith(bridge + "/v1/infer/")
            and isinstance(resp, dict) and resp.get("status_code") == 200 and isinstance(resp.get("body"), dict))


@builtin("http.send")
def http_send(ctx: EvalContext, req: Any) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise BuiltinError(f"operand 1 must be object but got {type_name(req)}")
    invalid = RegoSet(k for k in req if k not in _ALLOWED_KEYS)
    if invalid:
        raise BuiltinError(f"operand 1 invalid request parameters(s): {rego_repr(invalid)}")
    missing = RegoSet(k for k in ("method", "url") if k not in req)
    if missing:
        raise BuiltinError(f"operand 1 missing required request parameters(s): {rego_repr(missing)}")
    raise_error = req.get("raise_error", True) is not False
    key = ("http.send", canonical_key(req))
    if key in ctx.cache:
        return ctx.cache[key]
    try:
        resp = _send(ctx, req)
    except (DeadlineExceeded, HaltError):
        raise
    except TimeoutError as exc:
        raise HaltError(f"http.send: timed out ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - transport failures become OPA's network error
        if raise_error:
            raise BuiltinError(str(exc)) from None
        resp = {"status_code": 0, "error": {"code": "eval_http_send_network_error", "message": str(exc)}}
    ctx.cache[key] = resp
    return resp
