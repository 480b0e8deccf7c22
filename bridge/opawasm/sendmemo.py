"""The guest side of `host.SendMemo`: an `http.send` call answered by the request's own text.

A hit never reads the request into Python: the guest prints it (`opa_value_dump`, the memo's key)
and the kept response is parsed back in (`opa_value_parse`). Within one evaluation a request's
response is kept by its address too, as `http.send` keeps one answer per request for the whole
evaluation (and a repeat is then no call of the transport's, nor a hit of the memo's).
"""

from __future__ import annotations

from typing import Any

from bridge.opawasm.builtins.http import memoizable
from bridge.opawasm.builtins.registry import EvalContext
from bridge.opawasm.host import SendMemo
from bridge.opawasm.hostcall import Instance, parse_text
from bridge.opawasm.values import encode_value


def request_text(inst: Instance, addr: int) -> bytes:
    """The request as the guest prints it: the memo's key."""
    return inst.read_cstr(inst.call("opa_value_dump", addr))


def answered(inst: Instance, ctx: EvalContext, memo: SendMemo, key: bytes) -> int:
    """The response's guest address when this evaluation or the memo has it, else 0."""
    found: int | None = ctx.cache.get(("http.send memo", key))
    if found is None:
        raw = memo.get(key)
        if raw is None:
            return 0
        found = ctx.cache[("http.send memo", key)] = parse_text(inst, raw)
    return found


def learn(ctx: EvalContext, memo: SendMemo, key: bytes, request: Any, response: Any, addr: int) -> None:
    """Keep the response of a call that went the normal way (written back at `addr`), when it is
    one the memo may keep."""
    if memoizable(ctx.host, request, response):
        memo.keep(key, encode_value(response))
        ctx.cache[("http.send memo", key)] = addr
