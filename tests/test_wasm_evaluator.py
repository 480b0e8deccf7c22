"""The in-process OPA-WASM evaluator: bundle loading and refusal, failure isolation, pool, hot swap,
http.send routing, deadlines. Real opa builds every module; real wasmtime runs it."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import subprocess
import threading
import time
import uuid

import msgspec
import pytest
import wasmtime

from bridge.kernel import errors as kernel
from bridge.opabundle.archive import read_bundle, write_bundle
from bridge.opabundle.keys import generate_keypair
from bridge.opabundle.signing import sign_bundle
from bridge.opawasm import (
    UNDEFINED,
    HostConfig,
    LoadOptions,
    WasmEvaluator,
    WasmPolicy,
    load_bundle,
    policy_from_files,
)
from bridge.opawasm import errors as wasm_errors
from bridge.opawasm import evaluator as evaluator_mod
from controlplane.infra.toolchain import opa_binary
from tests.wasm_helpers import build_wasm_bundle, bundle_files, signed_bundle

POLICY = """package t
import rego.v1

default allow := false
allow if input.user == data.admins[_]

rev := data.rev

slow if {
  some i in numbers.range(1, 4000)
  some j in numbers.range(1, 4000)
  i * j == -1
}

big := count(numbers.range(1, 20000000))

conflict := input.x if input.y
conflict := 2 if input.y

deep := count(input.a)
"""
ENTRYPOINTS = ["t/allow", "t/rev", "t/slow", "t/big", "t/conflict", "t/deep"]


@pytest.fixture(scope="module")
def key():
    return generate_keypair("RS256", "wasm-test")


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["alice"], "rev": "A"})


@pytest.fixture(scope="module")
def policy(bundle: bytes) -> WasmPolicy:
    return policy_from_files(bundle_files(bundle), memory_limit=32 << 20, pool_size=2)


def keys_of(key):
    return {key.kid: key.verification_key()}


# -- loading ------------------------------------------------------------------------------------


def test_signed_bundle_loads_and_evaluates(bundle, key):
    p = load_bundle(signed_bundle(bundle, key), keys_of(key))
    assert p.evaluate("t/allow", {"user": "alice"}) is True
    assert p.evaluate("data.t.allow", {"user": "bob"}) is False
    assert p.evaluate_raw("t/allow", b'{"user":"alice"}') == b'[{"result":true}]'
    assert p.abi >= (1, 2)
    assert set(p.entrypoints) == set(ENTRYPOINTS)


def test_unsigned_bundle_is_refused(bundle, key):
    with pytest.raises(wasm_errors.BundleVerificationFailed, match="verification failed"):
        load_bundle(bundle, keys_of(key))


def test_tampered_bundle_is_refused(bundle, key):
    files = read_bundle(signed_bundle(bundle, key))
    files["/data.json"] = b'{"admins":["mallory"],"rev":"A"}'
    with pytest.raises(wasm_errors.BundleVerificationFailed, match="digest mismatch"):
        load_bundle(write_bundle(files), keys_of(key))
    files = read_bundle(signed_bundle(bundle, key))
    wasm = bytearray(files["/policy.wasm"])
    wasm[-10] ^= 0xFF
    files["/policy.wasm"] = bytes(wasm)
    with pytest.raises(wasm_errors.BundleVerificationFailed, match=r"policy\.wasm: digest mismatch"):
        load_bundle(write_bundle(files), keys_of(key))


def test_wrong_key_is_refused(bundle, key):
    other = generate_keypair("RS256", "wasm-test")  # same kid, different key
    with pytest.raises(wasm_errors.BundleVerificationFailed):
        load_bundle(signed_bundle(bundle, other), keys_of(key))
    stranger = generate_keypair("ES256", "stranger")
    with pytest.raises(wasm_errors.BundleVerificationFailed):
        load_bundle(signed_bundle(bundle, stranger), keys_of(key))


def test_no_keys_is_refused(bundle, key):
    with pytest.raises(wasm_errors.BundleVerificationFailed, match="no verification keys"):
        load_bundle(signed_bundle(bundle, key), {})


def test_missing_builtins_refused_at_load_time_with_names(tmp_path):
    # acme.lookup: a builtin of the caller's own, declared to opa build through its capabilities
    caps = msgspec.json.decode(subprocess.run([str(opa_binary()), "capabilities", "--current"],
                                              capture_output=True, check=True).stdout)
    caps["builtins"].append({"name": "acme.lookup", "decl": {"type": "function", "args": [{"type": "string"}],
                                                            "result": {"type": "string"}}})
    (tmp_path / "caps.json").write_bytes(msgspec.json.encode(caps))
    src = """package m
import rego.v1
a := acme.lookup(input.q)
b := rego.parse_module("x.rego", input.m)
c := sprintf("%v", [input.x])
"""
    b = build_wasm_bundle({"m.rego": src}, ["m/a", "m/b", "m/c"], flags=("--capabilities", str(tmp_path / "caps.json")))
    with pytest.raises(wasm_errors.MissingBuiltinsError) as exc:
        policy_from_files(bundle_files(b))
    assert exc.value.missing == ["acme.lookup", "rego.parse_module"]
    assert "acme.lookup, rego.parse_module" in str(exc.value)
    # the caller's own builtin is provided through the load options; rego.parse_module stays missing
    with pytest.raises(wasm_errors.MissingBuiltinsError) as exc:
        policy_from_files(bundle_files(b), custom_builtins={"acme.lookup": lambda ctx, q: q.upper()})
    assert exc.value.missing == ["rego.parse_module"]


def test_custom_builtins_are_called_with_the_evaluation_context(tmp_path):
    caps = msgspec.json.decode(subprocess.run([str(opa_binary()), "capabilities", "--current"],
                                              capture_output=True, check=True).stdout)
    caps["builtins"].append({"name": "acme.lookup", "decl": {"type": "function", "args": [{"type": "string"}],
                                                            "result": {"type": "string"}}})
    (tmp_path / "caps.json").write_bytes(msgspec.json.encode(caps))
    src = "package m\nimport rego.v1\na := acme.lookup(input.q)\n"
    b = build_wasm_bundle({"m.rego": src}, ["m/a"], flags=("--capabilities", str(tmp_path / "caps.json")))
    seen = []

    def lookup(ctx, q):
        seen.append(ctx.remaining() > 0)
        return q.upper()

    pol = policy_from_files(bundle_files(b), custom_builtins={"acme.lookup": lookup})
    assert pol.evaluate("m/a", {"q": "abc"}) == "ABC"
    assert seen == [True]


def test_old_abi_is_refused_clearly():
    wat = """(module
      (import "env" "memory" (memory 2))
      (global (export "opa_wasm_abi_version") i32 (i32.const 1))
      (global (export "opa_wasm_abi_minor_version") i32 (i32.const 1))
      (func (export "eval") (param i32) (result i32) (i32.const 0)))"""
    with pytest.raises(wasm_errors.UnsupportedABIError, match=r"unsupported OPA wasm ABI 1\.1 \(want 1\.2 or later"):
        WasmPolicy(wasmtime.wat2wasm(wat))


def test_garbage_module_is_refused():
    with pytest.raises(wasm_errors.BundleLoadError, match="not a valid wasm module"):
        WasmPolicy(b"\x00asm-not-really")


def test_unknown_entrypoint(policy):
    with pytest.raises(wasm_errors.UnknownEntrypointError, match="t/nope"):
        policy.evaluate("t/nope", {})


def test_undefined_result(policy):
    assert policy.evaluate("t/conflict", {"y": False}) is UNDEFINED


# -- failures: clear error, instance discarded, pool keeps serving --------------------------------


def _serves(policy: WasmPolicy) -> None:
    assert policy.evaluate("t/allow", {"user": "alice"}) is True


def test_trap_discards_instance_and_pool_keeps_serving(policy):
    before = policy.pool.discarded
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(wasm_errors.WasmTrap, match="stack overflow"):
        policy.evaluate_raw("t/deep", deep)
    assert policy.pool.discarded == before + 1
    _serves(policy)


def test_deadline_overrun(policy):
    t0 = time.monotonic()
    with pytest.raises(wasm_errors.DeadlineExceeded, match="deadline exceeded") as exc:
        policy.evaluate("t/slow", {}, timeout=0.02)
    assert time.monotonic() - t0 < 2.0  # the policy alone would run for seconds
    # an evaluation failure (callers deny on it) and the family's deadline error, with its 504
    assert isinstance(exc.value, wasm_errors.EvaluationError) and isinstance(exc.value, kernel.DeadlineExceeded)
    assert kernel.error_document(exc.value)["error"]["code"] == "deadline_exceeded" and exc.value.status == 504
    _serves(policy)


def test_out_of_memory(policy):
    # a deadline long enough for the work done before memory runs out (~230M wasm instructions):
    # under the default 1 s it would count as a runaway, which fails as late (test_wasm_inline)
    with pytest.raises(wasm_errors.OutOfMemory, match="out of memory"):
        policy.evaluate("t/big", {}, timeout=10.0)
    _serves(policy)


def test_input_larger_than_memory_cap(policy):
    with pytest.raises(wasm_errors.OutOfMemory, match="memory cap exceeded"):
        policy.evaluate_raw("t/allow", b'{"user":"' + b"x" * (40 << 20) + b'"}')
    _serves(policy)


def test_a_guest_address_outside_memory_is_refused_also_after_the_guest_grew_it(policy):
    """A string the guest hands over is read only from inside its linear memory. The size is asked
    of wasmtime only for an address at or past the size last read, so memory the guest grew since
    (without the host knowing) is read, and an address past it is still refused."""
    inst = policy._new_instance()
    try:
        size = inst.mem_size_now()
        for outside in (0, -8, size, size + 100):
            with pytest.raises(wasm_errors.WasmTrap, match="outside memory"):
                inst.read_cstr(outside)
        inst.memory.grow(inst.store, 1)  # as the guest's own memory.grow: the host's size is now stale
        assert inst.mem_size == size
        inst.write(size + 10, b"grown\0")
        assert inst.read_cstr(size + 10) == b"grown" and inst.mem_size == size + 65536
        with pytest.raises(wasm_errors.WasmTrap, match="outside memory"):
            inst.read_cstr(size + 65536)
    finally:
        inst.close()


def test_runtime_error_is_an_error_not_a_decision(policy):
    with pytest.raises(wasm_errors.PolicyAbort, match="var assignment conflict"):
        policy.evaluate("t/conflict", {"x": 1, "y": True})
    _serves(policy)


def test_pool_is_bounded_and_thread_safe(bundle):
    p = policy_from_files(bundle_files(bundle), pool_size=3)
    errors: list[BaseException] = []
    results: list[bool] = []

    def worker(i: int) -> None:
        try:
            for _ in range(300):
                results.append(p.evaluate("t/allow", {"user": "alice" if i % 2 else "bob"}) is (i % 2 == 1))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(results) and len(results) == 2400
    assert p.pool.live <= 3


# -- hot swap -----------------------------------------------------------------------------------


def test_hot_swap_is_atomic_and_in_flight_evaluations_finish(key):
    a = signed_bundle(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["alice"], "rev": "A"}), key)
    b = signed_bundle(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["bob"], "rev": "B"}), key)
    ev = WasmEvaluator(keys_of(key), pool_size=4)
    ev.load(a)
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        try:
            while not stop.is_set():
                seen.append(ev.evaluate("t/rev"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    ev.load(b)
    time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert set(seen) <= {"A", "B"} and "A" in seen and "B" in seen
    assert ev.evaluate("t/rev") == "B" and ev.evaluate("t/allow", {"user": "bob"}) is True
    # a bad revision never replaces the good one
    with pytest.raises(wasm_errors.BundleVerificationFailed):
        ev.load(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": [], "rev": "C"}))
    assert ev.evaluate("t/rev") == "B"


def test_a_pinned_revision_stays_open_until_its_block_ends(key):
    """`pinned()` holds the revision current at its start: a newer one loaded meanwhile serves
    everyone else, the pinned one keeps evaluating, and is closed when its last pin ends."""
    a = signed_bundle(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["alice"], "rev": "A"}), key)
    b = signed_bundle(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["bob"], "rev": "B"}), key)
    c = signed_bundle(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["carol"], "rev": "C"}), key)
    ev = WasmEvaluator(keys_of(key), pool_size=2)
    with ev.pinned() as none:
        assert none is ev  # nothing loaded: evaluations fail as unpinned ones do
        with pytest.raises(wasm_errors.PoolClosed):
            none.evaluate("t/rev")
    first = ev.load(a)
    with ev.pinned() as outer:
        with ev.pinned() as inner:
            assert outer is inner is first
            second = ev.load(b)
            assert ev.evaluate("t/rev") == "B" and inner.evaluate("t/rev") == "A"
        assert outer.evaluate("t/rev") == "A" and not first.pool.closed  # one pin left
    assert first.pool.closed
    with pytest.raises(wasm_errors.PoolClosed):
        first.evaluate("t/rev")
    ev.load(c)  # an unpinned revision is closed as soon as it is replaced
    assert second.pool.closed and ev.evaluate("t/rev") == "C"
    with ev.pinned() as pinned:
        ev.close()
        assert pinned.evaluate("t/rev") == "C"
    assert pinned.pool.closed


def test_a_baseline_first_load_serves_at_once_and_the_serving_compile_replaces_it(key, monkeypatch):
    """`load(..., baseline_first=True)` of a module the serving engine has not compiled: the revision
    serves on Winch's code at once (instances made later on other threads too, deadlines hold), and
    on the serving engine's when the background compile ends, with the same answers and the Winch
    policy closed; a module compiled already loads directly; a compile that ends after a newer
    revision was loaded never replaces it. The serving compile is held by a gate: ordering, not timing."""
    gate = threading.Event()
    real = evaluator_mod.policy_from_files

    def gated(files, options):
        if threading.current_thread().name == "wasm-serving-compile":
            assert gate.wait(120)
        return real(files, options)

    monkeypatch.setattr(evaluator_mod, "policy_from_files", gated)

    def fresh() -> dict[str, str]:  # a module no compile cache of this process has
        return {"p.rego": POLICY + f'\nmarker := "{uuid.uuid4()}"\n'}

    source = fresh()
    unsigned = build_wasm_bundle(source, ENTRYPOINTS, {"admins": ["alice"], "rev": "A"})
    a = signed_bundle(unsigned, key)
    other_data = {**read_bundle(unsigned), "/data.json": msgspec.json.encode({"admins": ["bob"], "rev": "B"})}
    b = signed_bundle(write_bundle(other_data), key)  # the same module, other data
    ev = WasmEvaluator(keys_of(key), pool_size=2)
    try:
        first = ev.load(a, baseline_first=True)
        assert first.on_baseline and ev.policy is first and first.lane is None
        answers: list[object] = []
        held = first.pool.acquire(5)  # the load's own instance, held: the next evaluation needs a new one
        try:
            worker = threading.Thread(target=lambda: answers.append(ev.evaluate("t/allow", {"user": "alice"})))
            worker.start()
            worker.join()
        finally:
            first.pool.release(held)
        assert answers == [True] and first.pool.live == 2  # made on another thread, outside `load_check()`
        with pytest.raises(wasm_errors.DeadlineExceeded):
            ev.evaluate("t/slow", timeout=0.05)
        assert not ev.settle(0.2)  # held
        assert ev.on_baseline and ev.baseline_loads == 1 and ev.baseline_seconds >= 0.2  # the window is open
        gate.set()
        assert ev.settle(120)
        served = ev.policy
        assert served is not first and not served.on_baseline and served.revision == first.revision
        assert first.pool.closed and ev.evaluate("t/rev") == "A" and ev.evaluate("t/allow", {"user": "alice"}) is True
        closed = ev.baseline_seconds  # the window closed with the swap: it no longer grows
        time.sleep(0.05)
        assert not ev.on_baseline and ev.baseline_seconds == closed >= 0.2

        second = ev.load(b, baseline_first=True)  # the same module: compiled already, loaded directly
        assert not second.on_baseline and ev.evaluate("t/rev") == "B"

        gate.clear()
        third = ev.load(signed_bundle(build_wasm_bundle(fresh(), ENTRYPOINTS, {"admins": [], "rev": "C"}), key),
                        baseline_first=True)
        assert third.on_baseline and ev.evaluate("t/rev") == "C" and ev.baseline_loads == 2
        assert ev.baseline_seconds > closed
        newest = ev.load(b)
        ended = ev.baseline_seconds  # a revision on optimized code ends the window too
        gate.set()
        assert ev.settle(120)
        assert ev.policy is newest and ev.evaluate("t/rev") == "B" and third.pool.closed
        assert ev.baseline_seconds == ended and not ev.on_baseline
    finally:
        gate.set()
        ev.close()


# -- http.send ----------------------------------------------------------------------------------

HTTP_POLICY = """package h
import rego.v1

judge := http.send({"method": "POST", "url": "http://bridge.local:8016/v1/infer/fast",
                    "body": {"prompt": input.prompt}, "timeout": "2s"})

outside := http.send({"method": "GET", "url": "https://example.com/x"})

outside_soft := http.send({"method": "GET", "url": "https://example.com/x", "raise_error": false})

allowed := http.send({"method": "GET", "url": "https://internal.example/x"}).body
"""


@pytest.fixture(scope="module")
def http_bundle() -> bytes:
    return build_wasm_bundle({"h.rego": HTTP_POLICY}, ["h/judge", "h/outside", "h/outside_soft", "h/allowed"])


def test_http_send_to_bridge_goes_to_the_infer_transport(http_bundle):
    calls = []

    def infer(tier, body, timeout):
        calls.append((tier, body, timeout))
        return 200, {"decision": "allow", "confidence": 0.9}

    p = policy_from_files(bundle_files(http_bundle), host=HostConfig(bridge_url="http://bridge.local:8016", infer_transport=infer))
    res = p.evaluate("h/judge", {"prompt": "hi"})
    assert res["status_code"] == 200 and res["body"] == {"decision": "allow", "confidence": 0.9}
    assert calls[0][0] == "fast" and calls[0][1] == {"prompt": "hi"} and 0 < calls[0][2] <= 1.0


def test_http_send_other_urls_refused_unless_allowed(http_bundle):
    seen = []

    def http(method, url, headers, body, timeout):
        seen.append(url)
        return 200, {"content-type": "application/json"}, b'{"ok": true}'

    host = HostConfig(allowed_url_prefixes=("https://internal.example/",), http_transport=http)
    p = policy_from_files(bundle_files(http_bundle), host=host)
    assert p.evaluate("h/outside") is UNDEFINED  # refused: undefined, never an allow
    soft = p.evaluate("h/outside_soft")
    assert soft["status_code"] == 0 and "not allowed" in soft["error"]["message"]
    assert p.evaluate("h/allowed") == {"ok": True}
    assert seen == ["https://internal.example/x"]


def test_deadline_bounds_host_builtins(http_bundle):
    def slow_infer(tier, body, timeout):
        time.sleep(timeout)
        raise TimeoutError(f"no reply within {timeout:.3f}s")

    p = policy_from_files(bundle_files(http_bundle), host=HostConfig(bridge_url="http://bridge.local:8016", infer_transport=slow_infer))
    t0 = time.monotonic()
    with pytest.raises(wasm_errors.EvaluationError, match=r"timed out|deadline"):
        p.evaluate("h/judge", {"prompt": "x"}, timeout=0.1)
    assert time.monotonic() - t0 < 2.0


def test_transport_deadline_is_a_network_error_not_the_evaluations(http_bundle):
    # the NATS request timed out but the evaluation still has time: as topdown treats a request
    # timeout while its own context is alive, a builtin error (undefined), not a halt
    def timed_out(tier, body, timeout):
        raise kernel.DeadlineExceeded("groq.infer.fast: no answer within the deadline")

    p = policy_from_files(bundle_files(http_bundle), host=HostConfig(bridge_url="http://bridge.local:8016",
                                                                     infer_transport=timed_out))
    assert p.evaluate("h/judge", {"prompt": "x"}, timeout=2.0) is UNDEFINED
    strict = policy_from_files(bundle_files(http_bundle), strict_builtin_errors=True,
                               host=HostConfig(bridge_url="http://bridge.local:8016", infer_transport=timed_out))
    with pytest.raises(wasm_errors.BuiltinHalt, match=r"http\.send: groq\.infer\.fast: no answer"):
        strict.evaluate("h/judge", {"prompt": "x"}, timeout=2.0)


async def test_async_evaluation_does_not_block_the_loop(http_bundle):
    def infer(tier, body, timeout):
        time.sleep(0.2)
        return 200, {"decision": "review"}

    p = policy_from_files(bundle_files(http_bundle), host=HostConfig(bridge_url="http://bridge.local:8016", infer_transport=infer))
    stamps: list[float] = []

    async def ticker():
        for _ in range(15):
            stamps.append(time.monotonic())
            await asyncio.sleep(0.01)

    res, _ = await asyncio.gather(p.evaluate_async("h/judge", {"prompt": "x"}), ticker())
    assert res["body"] == {"decision": "review"}
    # the 200 ms http.send never held the loop: the ticker kept ticking meanwhile
    assert max(b - a for a, b in itertools.pairwise(stamps)) < 0.15


# -- print, runtime, data, manifest -------------------------------------------------------------


def test_print_reaches_the_host_like_opa_eval():
    src = {"p.rego": 'package p\nimport rego.v1\nr if { print("hello", input.x, input.missing, {2, 1}); true }\n'}
    b = build_wasm_bundle(src, ["p/r"], flags=("--wasm-include-print",))
    lines: list[str] = []
    p = policy_from_files(bundle_files(b), host=HostConfig(on_print=lines.append))
    assert p.evaluate("p/r", {"x": [1, "a"]}) is True
    # exactly what `opa eval` writes to stderr for the same print
    assert lines == ['hello [1, "a"] <undefined> {1, 2}']


def test_opa_runtime_is_the_host_runtime_with_config_secrets_redacted():
    src = {"p.rego": "package p\nimport rego.v1\nrt := opa.runtime()\n"}
    host = HostConfig(runtime={"version": "groqpolicy", "config": {"services": {"s": {"credentials": "x"}}, "labels": {"a": "b"}}})
    p = policy_from_files(bundle_files(build_wasm_bundle(src, ["p/rt"])), host=host)
    assert p.evaluate("p/rt") == {"version": "groqpolicy", "config": {"labels": {"a": "b"}}}


def test_data_files_merge_by_directory(bundle):
    src = {"p.rego": "package p\nimport rego.v1\nv := [data.a.b.x, data.top]\n"}
    files = bundle_files(build_wasm_bundle(src, ["p/v"]))
    files["/data.json"] = b'{"top": true}'
    files["/a/b/data.json"] = b'{"x": 42}'
    assert policy_from_files(files).evaluate("p/v") == [42, True]
    files["/a/data.json"] = b'{"b": {"x": 1}}'
    with pytest.raises(wasm_errors.BundleLoadError, match="conflicts"):
        policy_from_files(files)


def test_manifest_entrypoint_missing_from_module_is_refused(bundle):
    files = bundle_files(bundle)
    files["/.manifest"] = b'{"revision": "r", "roots": [""], "wasm": [{"entrypoint": "t/nope", "module": "/policy.wasm"}]}'
    with pytest.raises(wasm_errors.BundleLoadError, match="t/nope"):
        policy_from_files(files)
    files["/.manifest"] = b'{"wasm": [{"entrypoint": "t/allow", "module": "/other.wasm"}]}'
    with pytest.raises(wasm_errors.BundleLoadError, match=r"/other\.wasm: named in /\.manifest but missing"):
        policy_from_files(files)


async def test_async_evaluation_of_a_pure_policy(policy):
    assert not policy.may_block
    results = await asyncio.gather(*(policy.evaluate_async("t/allow", {"user": u}) for u in ["alice", "bob"] * 50))
    assert results == [True, False] * 50


def test_pool_exhaustion_times_out_with_a_clear_error(bundle):
    p = policy_from_files(bundle_files(bundle), pool_size=1)
    p.pool.acquire_timeout = 0.05
    held = p.pool.acquire()
    try:
        with pytest.raises(wasm_errors.PoolExhausted, match="no policy instance free"):
            p.evaluate("t/allow", {"user": "alice"})
    finally:
        p.pool.release(held)
    _serves(p)


def _tampered(signed: bytes) -> bytes:
    files = read_bundle(signed)
    files["/data.json"] = b'{"admins":["mallory"],"rev":"X"}'
    return write_bundle(files)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ("tampered", wasm_errors.BundleVerificationFailed, "digest mismatch"),
        ("wrong_key", wasm_errors.BundleVerificationFailed, "verification failed"),
        ("unsigned", wasm_errors.BundleVerificationFailed, "verification failed"),
        ("missing_builtin", wasm_errors.MissingBuiltinsError, "missing builtins (not provided by the host): rego.parse_module"),
        ("not_a_bundle", wasm_errors.BundleLoadError, "bundle archive"),
    ],
)
def test_a_refused_revision_leaves_the_evaluator_serving(bad, error, message, bundle, key):
    ev = WasmEvaluator(keys_of(key), pool_size=2)
    ev.load(signed_bundle(bundle, key))
    if bad == "tampered":
        blob = _tampered(signed_bundle(bundle, key))
    elif bad == "wrong_key":
        blob = signed_bundle(bundle, generate_keypair("RS256", key.kid))
    elif bad == "unsigned":
        blob = bundle
    elif bad == "missing_builtin":
        src = {"m.rego": "package t\nimport rego.v1\nallow := rego.parse_module(\"x.rego\", input.m)\n"}
        blob = signed_bundle(build_wasm_bundle(src, ["t/allow"]), key)
    else:
        blob = b"definitely not gzip"
    with pytest.raises(error, match=re.escape(message)):
        ev.load(blob)
    assert ev.revision == "" and ev.evaluate("t/allow", {"user": "alice"}) is True
    assert ev.evaluate("t/rev") == "A"


def test_heap_is_reset_between_evaluations(bundle):
    p = policy_from_files(bundle_files(bundle), pool_size=1)
    big = {"user": "alice", "pad": ["x" * 100] * 200}
    p.evaluate("t/allow", big)
    inst = p.pool.acquire()
    size_before = inst.mem_size_now()
    p.pool.release(inst)
    for _ in range(2000):
        assert p.evaluate("t/allow", big) is True
    inst = p.pool.acquire()
    assert inst.mem_size_now() == size_before  # ~40 MB of inputs went through without growth
    p.pool.release(inst)


async def test_async_with_a_busy_pool_waits_off_the_loop(bundle):
    p = policy_from_files(bundle_files(bundle), pool_size=1)
    held = p.pool.acquire()
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, p.pool.release, held)
    ticks = 0

    async def ticker():
        nonlocal ticks
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1

    res, _ = await asyncio.gather(p.evaluate_async("t/allow", {"user": "alice"}), ticker())
    assert res is True and ticks == 5


def test_stress_threads_failures_and_swaps_together(key):
    """Threads evaluate good and failing entrypoints while revisions are swapped: every result
    is a correct value or a typed evaluation error, and the process stays healthy."""
    revs = [signed_bundle(build_wasm_bundle({"p.rego": POLICY}, ENTRYPOINTS, {"admins": ["alice"], "rev": r}), key)
            for r in ("A", "B")]
    ev = WasmEvaluator(keys_of(key), pool_size=3, memory_limit=32 << 20)
    ev.load(revs[0])
    stop = threading.Event()
    problems: list[str] = []
    counts = {"ok": 0, "err": 0}
    deep = b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}"

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            kind = (n + i) % 5
            try:
                if kind == 0:
                    ev.evaluate("t/slow", {}, timeout=0.01)
                    problems.append("slow returned")
                elif kind == 1:
                    ev.evaluate_raw("t/deep", deep)
                    problems.append("deep returned")
                elif kind == 2:
                    ev.evaluate("t/conflict", {"x": 1, "y": True})
                    problems.append("conflict returned")
                else:
                    if ev.evaluate("t/allow", {"user": "alice"}) is not True or ev.evaluate("t/rev") not in ("A", "B"):
                        problems.append("wrong value")
                    counts["ok"] += 1
                    continue
            except (wasm_errors.EvaluationError, wasm_errors.PoolClosed):
                counts["err"] += 1
            except BaseException as exc:  # noqa: BLE001
                problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    k = 0
    while k < 6 or time.monotonic() - t0 < 0.6:
        ev.load(revs[k % 2])
        k += 1
        time.sleep(0.03)
    stop.set()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert counts["ok"] > 20 and counts["err"] > 20
    assert ev.evaluate("t/allow", {"user": "alice"}) is True


def test_a_bug_in_a_host_builtin_fails_the_evaluation(monkeypatch):
    """Operand errors make a call undefined (topdown); a bug must not: `deny if bug()` would
    silently stop denying. It fails the evaluation instead."""
    from bridge.opawasm.builtins import REGISTRY, provided

    provided()  # load the builtin modules first, so the patch is not overwritten by their import

    def broken(ctx, s):
        return {}["missing"]

    monkeypatch.setitem(REGISTRY, "crypto.md5", broken)
    src = {"p.rego": "package p\nimport rego.v1\ndeny if crypto.md5(input.x) != \"\"\n"}
    p = policy_from_files(bundle_files(build_wasm_bundle(src, ["p/deny"])))
    with pytest.raises(wasm_errors.EvaluationError, match="KeyError"):
        p.evaluate("p/deny", {"x": "a"})
    # an operand error stays what topdown makes it: undefined (not an error, not a deny)
    monkeypatch.undo()
    p2 = policy_from_files(bundle_files(build_wasm_bundle(src, ["p/deny"])))
    assert p2.evaluate("p/deny", {"x": 5}) is UNDEFINED
    assert p2.evaluate("p/deny", {"x": "a"}) is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_its_own_engine_and_deadlines(bundle):
    """Pre-forking servers: a child loads policies again and its deadlines still fire."""
    policy_from_files(bundle_files(bundle))  # the parent has an engine and a ticker thread
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            p = policy_from_files(bundle_files(bundle))
            try:
                p.evaluate("t/slow", {}, timeout=0.02)
            except wasm_errors.DeadlineExceeded:
                code = 0 if p.evaluate("t/allow", {"user": "alice"}) is True else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0


def test_render_template_outside_the_supported_subset_fails_closed():
    src = {"p.rego": "package p\nimport rego.v1\nmsg := strings.render_template(input.t, {\"x\": 1})\n"}
    p = policy_from_files(bundle_files(build_wasm_bundle(src, ["p/msg"])))
    assert p.evaluate("p/msg", {"t": "x={{.x}}"}) == "x=1"
    with pytest.raises(wasm_errors.BuiltinHalt, match=r"\{\{define\}\} is not supported"):
        p.evaluate("p/msg", {"t": '{{define "a"}}b{{end}}'})


def test_match_schema_with_keywords_it_cannot_check_fails_closed():
    src = {"p.rego": "package p\nimport rego.v1\nok := json.match_schema(input.d, input.s)[0]\n"}
    p = policy_from_files(bundle_files(build_wasm_bundle(src, ["p/ok"])))
    assert p.evaluate("p/ok", {"d": {"a": 1}, "s": {"type": "object", "required": ["a"]}}) is True
    with pytest.raises(wasm_errors.BuiltinHalt, match="not supported by this host: oneOf"):
        p.evaluate("p/ok", {"d": {"a": 1}, "s": {"oneOf": [{"type": "string"}]}})


# -- load options -------------------------------------------------------------------------------


def test_load_options_as_a_struct_or_as_keywords(bundle):
    files = bundle_files(bundle)
    opts = LoadOptions(pool_size=3, memory_limit=32 << 20, timeout=0.5)
    p = policy_from_files(files, opts)
    q = policy_from_files(files, opts, pool_size=1)  # a keyword replaces one field of the struct
    try:
        assert (p.pool_size, p.memory_limit, p.timeout) == (3, 32 << 20, 0.5)
        assert (q.pool_size, q.memory_limit, q.timeout) == (1, 32 << 20, 0.5)
        assert opts.pool_size == 3
    finally:
        p.close()
        q.close()
    with pytest.raises(TypeError, match=r"unknown load option.*poolsize"):
        policy_from_files(files, poolsize=1)
    with pytest.raises(ValueError, match="pool_size"):
        LoadOptions(pool_size=0)
    with pytest.raises(ValueError, match="timeout"):
        LoadOptions(timeout=0)


def test_verification_options_reach_the_verifier(bundle, key):
    signed = signed_bundle(bundle, key)
    with pytest.raises(wasm_errors.BundleVerificationFailed, match="nobody: verification key not found"):
        load_bundle(signed, keys_of(key), LoadOptions(keyid="nobody"))
    with pytest.raises(wasm_errors.BundleVerificationFailed, match="scope mismatch"):
        load_bundle(signed, keys_of(key), scope="tenant-a")
    scoped = write_bundle(sign_bundle(read_bundle(bundle), key, scope="tenant-a"))
    load_bundle(scoped, keys_of(key), scope="tenant-a").close()


def test_evaluator_revisions_share_its_host(bundle, key):
    ev = WasmEvaluator(keys_of(key), LoadOptions(pool_size=1))
    first = ev.load(signed_bundle(bundle, key))
    lines: list[str] = []
    ev.host.on_print = lines.append  # set after construction, as the control plane sets its transport
    second = ev.load(signed_bundle(bundle, key))
    try:
        assert first.host is second.host is ev.host and second.host.on_print == lines.append
    finally:
        ev.close()
