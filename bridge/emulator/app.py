"""A Groq-compatible HTTP API for tests and the no-key default (raw ASGI, no framework).

Speaks the paths the `groq` SDK calls (`/openai/v1/chat/completions`, `/openai/v1/models[/{id}]`),
with Groq's response shape (`usage.queue_time/prompt_time/completion_time/total_time`, `x_groq.id`),
`x-ratelimit-*` and `x-request-id` headers, and Groq's error bodies
`{"error": {"message", "type", "code"}}`.

Answers are deterministic: the verdict comes from keyword rules over the *user* messages
(injection/harm markers -> deny, `<review>`-style markers -> review, else allow) and the
confidence from a hash of them, so the same prompt always gets the same answer.

Faults, three ways (first match wins):
1. a marker in any message: `[[groq-emulator:429]]` (also 498, 500, 503, timeout, malformed,
   schema_violation, json_validate_failed, slow=<ms>) forces that fault on every call;
2. queued per model through the admin API: `POST /admin/faults {"model": m|"*", "faults": [..]}`
   serves them to the next calls, one each (so "429 then success" is expressible);
3. random, per model, from `ModelBehaviour` rates (`POST /admin/config`).
`GET /admin/stats` counts calls per model, faults served and response formats seen.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import re
import time
import uuid
from collections import Counter, defaultdict, deque
from typing import Any

import msgspec

from bridge.inference.catalog import Catalog, default_catalog

FAULTS = ("429", "498", "500", "503", "timeout", "malformed", "schema_violation", "json_validate_failed")
MARKER_RE = re.compile(r"\[\[groq-emulator:([a-z0-9_=]+)\]\]")

DENY_MARKERS = (
    "ignore previous instructions", "ignore all previous", "ignore the above", "disregard previous",
    "disregard the above", "jailbreak", "reveal your system prompt", "exfiltrate", "rm -rf",
    "drop table", "build a bomb", "make a weapon", "malware", "steal credentials", "<deny>",
)
REVIEW_MARKERS = ("<review>", "ambiguous", "not sure whether")


class ModelBehaviour(msgspec.Struct, omit_defaults=True):
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_429: float = 0.0
    rate_498: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    rate_schema_violation: float = 0.0
    retry_after_s: float = 1.0
    hang_s: float = 30.0
    tokens_per_s: float = 800.0


class EmulatorConfig(msgspec.Struct):
    default: ModelBehaviour = msgspec.field(default_factory=ModelBehaviour)
    models: dict[str, ModelBehaviour] = msgspec.field(default_factory=dict)
    api_key: str | None = None
    """When set, requests must carry `Authorization: Bearer <api_key>` (else 401 invalid_api_key)."""
    seed: int = 0
    requests_per_day: int = 14_400
    tokens_per_minute: int = 250_000

    def behaviour(self, model: str) -> ModelBehaviour:
        return self.models.get(model, self.default)


class _FaultRequest(msgspec.Struct):
    faults: list[str]
    model: str = "*"


class _ConfigRequest(msgspec.Struct):
    default: ModelBehaviour | None = None
    models: dict[str, ModelBehaviour] = {}


def verdict_for(user_text: str) -> tuple[str, float, str]:
    """(decision, confidence, rationale): the emulated model's deterministic judgment."""
    low = user_text.lower()
    digest = hashlib.sha256(user_text.encode()).digest()
    jitter = digest[0] % 15 / 100
    for marker in DENY_MARKERS:
        if marker in low:
            return "deny", round(0.85 + jitter, 2), f"emulated: matched risk marker {marker!r}"
    for marker in REVIEW_MARKERS:
        if marker in low:
            return "review", round(0.5 + jitter, 2), f"emulated: matched uncertainty marker {marker!r}"
    return "allow", round(0.8 + jitter, 2), "emulated: no risk markers found"


def _instance_of(schema: dict[str, Any], verdict: tuple[str, float, str]) -> Any:
    """A value valid under a (strict-subset) JSON schema, using the verdict where names fit."""
    t = schema.get("type")
    if "enum" in schema:
        return verdict[0] if verdict[0] in schema["enum"] else schema["enum"][0]
    if t == "object":
        out = {}
        for name, sub in (schema.get("properties") or {}).items():
            if name == "decision" and "enum" in sub:
                out[name] = verdict[0] if verdict[0] in sub["enum"] else sub["enum"][0]
            elif name == "confidence":
                out[name] = verdict[1]
            elif name in ("rationale", "reason", "explanation"):
                out[name] = verdict[2]
            else:
                out[name] = _instance_of(sub, verdict)
        return out
    if t == "array":
        return []
    if t in ("number", "integer"):
        return 0 if t == "integer" else 0.5
    if t == "boolean":
        return verdict[0] == "allow"
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class GroqEmulator:
    """The ASGI app. `config`, `forced` and `stats` are live: tests may change them directly."""

    def __init__(self, config: EmulatorConfig | None = None, catalog: Catalog | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.catalog = catalog or default_catalog()
        self.forced: dict[str, deque[str]] = defaultdict(deque)
        self.rng = random.Random(self.config.seed)
        self.stats: dict[str, Any] = {}
        self.reset_stats()
        self._ids = itertools.count(1)
        self._created = int(time.time())

    def reset_stats(self) -> None:
        self.stats = {"calls": Counter(), "faults": Counter(), "formats": Counter(), "params": Counter(),
                      "sampling": Counter(), "total": 0}

    def force(self, *faults: str, model: str = "*") -> None:
        """Queue faults for the next calls to `model` (or any model)."""
        for f in faults:
            self._check_fault(f)
        self.forced[model].extend(faults)

    @staticmethod
    def _check_fault(f: str) -> None:
        if f not in FAULTS and not re.fullmatch(r"slow=\d+", f):
            raise ValueError(f"fault {f!r}: unknown (known: {', '.join(FAULTS)}, slow=<ms>)")

    # ---- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        body = b""
        if method == "POST":
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body += msg.get("body", b"")
                more = msg.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        if path.startswith("/admin/"):
            status, payload, extra = self._admin(method, path, body)
        elif path.startswith("/openai/v1/"):
            denied = self._auth(headers)
            if denied is not None:
                status, payload, extra = denied
            elif method == "POST" and path == "/openai/v1/chat/completions":
                status, payload, extra = await self._chat(body, receive)
            elif method == "GET" and path == "/openai/v1/models":
                status, payload, extra = 200, {"object": "list", "data": [self._model_obj(m) for m in self.catalog.models]}, {}
            elif method == "GET" and path.startswith("/openai/v1/models/"):
                mid = path[len("/openai/v1/models/"):]
                if mid in self.catalog.models:
                    status, payload, extra = 200, self._model_obj(mid), {}
                else:
                    status, payload, extra = self._error(404, f"The model `{mid}` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found")
            else:
                status, payload, extra = self._error(404, f"Unknown request URL: {method} {path}. Please check the URL for typos, or see the docs at https://console.groq.com/docs/", "invalid_request_error", "unknown_url")
        else:
            status, payload, extra = self._error(404, f"Unknown request URL: {method} {path}", "invalid_request_error", "unknown_url")
        if status == 0:  # the client went away while we were hanging
            return
        raw = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
        out_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                       (b"x-request-id", f"req_{uuid.uuid4().hex[:26]}".encode())]
        out_headers += [(k.encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": raw})

    # ---- pieces ------------------------------------------------------------------------------
    def _auth(self, headers: dict[str, str]) -> tuple[int, Any, dict] | None:
        if self.config.api_key is None:
            return None
        if headers.get("authorization") != f"Bearer {self.config.api_key}":
            return self._error(401, "Invalid API Key", "invalid_request_error", "invalid_api_key")
        return None

    @staticmethod
    def _error(status: int, message: str, type_: str, code: str, headers: dict | None = None) -> tuple[int, Any, dict]:
        return status, {"error": {"message": message, "type": type_, "code": code}}, headers or {}

    def _model_obj(self, mid: str) -> dict[str, Any]:
        spec = self.catalog.models[mid]
        return {"id": mid, "object": "model", "created": self._created, "owned_by": spec.owned_by, "active": True,
                "context_window": spec.context_window, "public_apps": None,
                "max_completion_tokens": spec.max_completion_tokens}

    def _ratelimit_headers(self) -> dict[str, str]:
        total = self.stats["total"]
        return {
            "x-ratelimit-limit-requests": self.config.requests_per_day,
            "x-ratelimit-remaining-requests": max(0, self.config.requests_per_day - total),
            "x-ratelimit-reset-requests": "6s",
            "x-ratelimit-limit-tokens": self.config.tokens_per_minute,
            "x-ratelimit-remaining-tokens": self.config.tokens_per_minute,
            "x-ratelimit-reset-tokens": "0s",
        }

    def _pick_fault(self, model: str, text: str, b: ModelBehaviour) -> str | None:
        m = MARKER_RE.search(text)
        if m:
            return m.group(1)
        for key in (model, "*"):
            if self.forced.get(key):
                return self.forced[key].popleft()
        r = self.rng.random()
        acc = 0.0
        for fault, rate in (("429", b.rate_429), ("498", b.rate_498), ("500", b.rate_500), ("timeout", b.rate_timeout),
                            ("malformed", b.rate_malformed), ("schema_violation", b.rate_schema_violation)):
            acc += rate
            if r < acc:
                return fault
        return None

    async def _hang(self, seconds: float, receive: Any) -> bool:
        """Sleep, but stop early when the client disconnects; True when it did."""
        sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
        waiter = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for t in (sleeper, waiter):
            if not t.done():
                t.cancel()
        return waiter in done and waiter.result().get("type") == "http.disconnect"

    async def _chat(self, body: bytes, receive: Any) -> tuple[int, Any, dict]:
        t0 = time.perf_counter()
        try:
            req = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return self._error(400, "We could not parse the JSON body of your request.", "invalid_request_error", "invalid_json")
        if not isinstance(req, dict):
            return self._error(400, "'body': expected an object", "invalid_request_error", "invalid_request")
        model = req.get("model")
        messages = req.get("messages")
        if not isinstance(model, str):
            return self._error(400, "'model' : property 'model' is missing", "invalid_request_error", "invalid_request")
        if model in self.catalog.aliases:
            return self._error(400, f"The model `{model}` has been decommissioned and is no longer supported. Please refer to https://console.groq.com/docs/deprecations for a recommendation on which model to use instead.", "invalid_request_error", "model_decommissioned")
        if model not in self.catalog.models:
            return self._error(404, f"The model `{model}` does not exist or you do not have access to it.", "invalid_request_error", "model_not_found")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "'messages' : minimum number of items is 1", "invalid_request_error", "invalid_request")
        if req.get("stream"):
            return self._error(400, "stream: not supported by the groqpolicy emulator", "invalid_request_error", "invalid_request")
        spec = self.catalog.models[model]
        effort, fmt, incl = req.get("reasoning_effort"), req.get("reasoning_format"), req.get("include_reasoning")
        if fmt is not None and incl is not None:
            return self._error(400, "`include_reasoning` and `reasoning_format` are mutually exclusive", "invalid_request_error", "invalid_request")
        if (fmt is not None or incl is not None) and not spec.reasoning:
            which = "reasoning_format" if fmt is not None else "include_reasoning"
            return self._error(400, f"`{which}` is not supported with this model", "invalid_request_error", "invalid_request")
        if effort is not None and effort not in spec.reasoning_efforts:
            return self._error(400, f"`reasoning_effort` value `{effort}` is not supported with this model (supported: {', '.join(spec.reasoning_efforts) or 'none'})", "invalid_request_error", "invalid_request")
        texts = [m.get("content") if isinstance(m, dict) and isinstance(m.get("content"), str) else "" for m in messages]
        user_text = "\n".join(t for m, t in zip(messages, texts) if isinstance(m, dict) and m.get("role") == "user")
        rf = req.get("response_format") or {"type": "text"}
        rf_type = rf.get("type", "text") if isinstance(rf, dict) else "text"
        strict = bool(rf.get("json_schema", {}).get("strict")) if rf_type == "json_schema" else False
        if strict and not spec.json_schema_strict:
            return self._error(400, f"`response_format.json_schema.strict` is not supported with model `{model}`; use strict: false or json_object", "invalid_request_error", "invalid_request")
        self.stats["total"] += 1
        self.stats["calls"][model] += 1
        self.stats["formats"][f"{model}:{rf_type}{':strict' if strict else ''}"] += 1
        if fmt == "raw" and rf_type in ("json_object", "json_schema"):
            return self._error(400, "`reasoning_format` raw is not supported with JSON mode", "invalid_request_error", "invalid_request")
        for name, value in (("reasoning_effort", effort), ("reasoning_format", fmt), ("include_reasoning", incl)):
            if value is not None:
                self.stats["params"][f"{model}:{name}={value}"] += 1
        for name in ("max_completion_tokens", "temperature"):
            if (value := req.get(name)) is not None:
                self.stats["sampling"][f"{model}:{name}={value}"] += 1

        b = self.config.behaviour(model)
        fault = self._pick_fault(model, "\n".join(texts), b)
        delay = b.latency_ms + (self.rng.random() * b.jitter_ms if b.jitter_ms else 0.0)
        if fault and fault.startswith("slow="):
            delay, fault = float(fault[5:]), None
        if fault:
            self.stats["faults"][f"{model}:{fault}"] += 1
        rl = self._ratelimit_headers()
        if fault == "429":
            return self._error(429, f"Rate limit reached for model `{model}` in organization `org_emulated` service tier `on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in {b.retry_after_s:g}s.", "requests", "rate_limit_exceeded",
                               {**rl, "x-ratelimit-remaining-requests": 0, "retry-after": f"{b.retry_after_s:g}"})
        if fault == "498":
            return self._error(498, "Capacity exceeded for flex tier, please try again later or use the on_demand service tier.", "capacity_exceeded", "capacity_exceeded", rl)
        if fault in ("500", "503"):
            msg = "Internal Server Error" if fault == "500" else "Service Unavailable: the model is over capacity"
            return self._error(int(fault), msg, "internal_server_error", "internal_server_error" if fault == "500" else "service_unavailable", rl)
        if fault == "json_validate_failed":
            return self._error(400, "Failed to generate JSON. Please adjust your prompt. See 'failed_generation' for more details.", "invalid_request_error", "json_validate_failed")
        if fault == "timeout":
            if await self._hang(b.hang_s, receive):
                return 0, b"", {}
            return self._error(504, "Gateway Timeout", "internal_server_error", "timeout")
        if delay > 0:
            if await self._hang(delay / 1000, receive):
                return 0, b"", {}

        verdict = verdict_for(user_text)
        if fault == "malformed":
            content = '{"decision": "allow", "confidence": 0.9, "rationale": "unterminated'
        elif fault == "schema_violation":
            content = '{"verdict": "yes", "confidence": 7}'
        elif rf_type == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {}
            content = msgspec.json.encode(_instance_of(schema, verdict)).decode()
        elif rf_type == "json_object":
            content = msgspec.json.encode({"decision": verdict[0], "confidence": verdict[1], "rationale": verdict[2]}).decode()
        else:
            content = f"DECISION: {verdict[0]}\nCONFIDENCE: {verdict[1]}\nRATIONALE: {verdict[2]}"

        prompt_tokens = sum(_tokens(t) for t in texts)
        completion_tokens = _tokens(content)
        queue_time = 0.0001 + self.rng.random() * 0.0004
        prompt_time = prompt_tokens / 20_000
        completion_time = completion_tokens / b.tokens_per_s
        elapsed = time.perf_counter() - t0
        total_time = max(prompt_time + completion_time, elapsed)
        n = next(self._ids)
        payload = {
            "id": f"chatcmpl-{uuid.uuid4()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"queue_time": round(queue_time, 6), "prompt_tokens": prompt_tokens, "prompt_time": round(prompt_time, 6),
                      "completion_tokens": completion_tokens, "completion_time": round(completion_time, 6),
                      "total_tokens": prompt_tokens + completion_tokens, "total_time": round(total_time, 6)},
            "usage_breakdown": None,
            "system_fingerprint": "fp_emulated",
            "x_groq": {"id": f"req_emulated_{n:08d}", "seed": self.config.seed},
            "service_tier": req.get("service_tier") or "on_demand",
        }
        return 200, payload, rl

    def _admin(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict]:
        try:
            if method == "GET" and path == "/admin/stats":
                return 200, {"total": self.stats["total"], "calls": dict(self.stats["calls"]),
                             "faults": dict(self.stats["faults"]), "formats": dict(self.stats["formats"]),
                             "params": dict(self.stats["params"]), "sampling": dict(self.stats["sampling"])}, {}
            if method == "POST" and path == "/admin/faults":
                fr = msgspec.json.decode(body, type=_FaultRequest)
                self.force(*fr.faults, model=fr.model)
                return 200, {"queued": {k: list(v) for k, v in self.forced.items() if v}}, {}
            if method == "POST" and path == "/admin/config":
                cr = msgspec.json.decode(body, type=_ConfigRequest)
                if cr.default is not None:
                    self.config.default = cr.default
                self.config.models.update(cr.models)
                return 200, msgspec.to_builtins(self.config), {}
            if method == "POST" and path == "/admin/reset":
                self.forced.clear()
                self.reset_stats()
                self.config.models.clear()
                self.config.default = ModelBehaviour()
                return 200, {"reset": True}, {}
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return self._error(400, f"{path}: {exc}", "invalid_request_error", "invalid_request")
        return self._error(404, f"Unknown admin URL: {method} {path}", "invalid_request_error", "unknown_url")


def create_app(config: EmulatorConfig | None = None, catalog: Catalog | None = None) -> GroqEmulator:
    return GroqEmulator(config, catalog)
