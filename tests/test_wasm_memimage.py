"""`data` parsed once per revision and mapped into every pooled instance (`memimage`).

Every answer is compared with a policy that parses `data` into each instance (`share_data=False`):
over the differential corpus, a data-heavy filter, a policy whose evaluations write heap, many
evaluations on one instance and a pool grown by concurrent callers. A corrupt or mismatched image
fails loudly; a module whose state is not all in linear memory is not shared.
"""

from __future__ import annotations

import fcntl
import gc
import os
import random
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import wasmtime

from bridge.opawasm import UNDEFINED, HostConfig, memimage, policy_from_files
from bridge.opawasm import errors as wasm_errors
from bridge.opawasm.policy import WasmPolicy
from tests.test_wasm_differential import MODULES, RUNTIME, _load
from tests.wasm_helpers import build_wasm_bundle, bundle_files

FILTER = """package t
import rego.v1

visible := [item.id |
  some item in data.inventory.items
  item.tenant == input.tenant
  item.level <= input.clearance
]
by_tag := {tag: n | some tag in {"red", "blue", "eu"}; n := count([1 | some item in data.inventory.items; tag in item.tags])}
"""

HEAP = """package t
import rego.v1

# every evaluation allocates: strings, arrays, objects and sets built from the input and data
labels := [sprintf("%s-%d-%s", [input.prefix, i, data.suffix]) | some i in numbers.range(1, input.n)]
joined := concat(",", labels)
index := {l: upper(l) | some l in labels}
unique := {substring(l, 0, 3) | some l in labels}
total := sum([count(l) | some l in labels])
"""


def _filter_data(n: int) -> dict[str, Any]:
    rnd = random.Random(7)
    items = [{"id": f"item-{i}", "tenant": f"t{rnd.randrange(8)}", "level": rnd.randrange(10),
              "tags": rnd.sample(["red", "blue", "eu", "us"], 2)} for i in range(n)]
    return {"inventory": {"items": items}}


def _pair(sources: dict[str, str], eps: list[str], data: Any, **kw: Any) -> tuple[WasmPolicy, WasmPolicy]:
    files = bundle_files(build_wasm_bundle(sources, eps, data))
    shared = policy_from_files(files, share_data=True, **kw)
    parsed = policy_from_files(files, share_data=False, **kw)
    assert shared.image is not None and parsed.image is None
    return shared, parsed


def _answer(policy: WasmPolicy, ep: str, inp: Any) -> Any:
    try:
        return policy.evaluate(ep, inp)
    except wasm_errors.EvaluationError as exc:
        return ("error", type(exc).__name__, str(exc))


def _image_mappings() -> int:
    return sum("groqpolicy-wasm-image" in line for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_corpus_answers_match_per_instance_parsing(path: Path) -> None:
    doc = _load(path)
    rules = sorted({c["rule"] for c in doc["cases"]})
    eps = [f"{doc['package'].replace('.', '/')}/{r}" for r in rules]
    shared, parsed = _pair({"m.rego": doc["module"]}, eps, doc.get("data"), host=HostConfig(runtime=RUNTIME),
                           pool_size=2, strict_builtin_errors=bool(doc.get("strict")))
    for c in doc["cases"]:
        ep = f"{doc['package'].replace('.', '/')}/{c['rule']}"
        assert _answer(shared, ep, c["input"]) == _answer(parsed, ep, c["input"]), c["id"]


def test_data_heavy_policy_and_pool_growth() -> None:
    shared, parsed = _pair({"f.rego": FILTER}, ["t/visible", "t/by_tag"], _filter_data(5000), pool_size=4)
    inputs = [{"tenant": f"t{t}", "clearance": c} for t in range(8) for c in (0, 4, 9)]
    want = {i: parsed.evaluate("t/visible", inp) for i, inp in enumerate(inputs)}
    assert sum(len(v) for v in want.values()) > 1000  # the data is really there
    assert shared.evaluate("t/by_tag") == parsed.evaluate("t/by_tag")
    got: dict[tuple[int, int], Any] = {}
    barrier = threading.Barrier(4)

    def run(worker: int) -> None:
        barrier.wait()  # all four at once: the pool must grow to four instances
        for i, inp in enumerate(inputs):
            got[(worker, i)] = shared.evaluate("t/visible", inp)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[(w, i)] == want[i] for w in range(4) for i in range(len(inputs)))
    assert shared.pool.live >= 2
    # each live instance maps the image (one mapping each, whatever the pool's size)
    assert _image_mappings() >= shared.pool.live


def test_heap_writing_evaluations_on_one_instance() -> None:
    shared, parsed = _pair({"h.rego": HEAP}, ["t/labels", "t/joined", "t/index", "t/unique", "t/total"],
                           {"suffix": "z" * 50}, pool_size=1)
    rnd = random.Random(3)
    for k in range(300):
        inp = {"prefix": f"p{rnd.randrange(1000)}", "n": rnd.randrange(1, 60)}
        ep = ("t/labels", "t/joined", "t/index", "t/unique", "t/total")[k % 5]
        assert shared.evaluate(ep, inp) == parsed.evaluate(ep, inp)
    assert shared.pool.live == 1 and shared.pool.discarded == 0


def test_instances_do_not_see_each_others_writes() -> None:
    shared, _ = _pair({"h.rego": HEAP}, ["t/joined"], {"suffix": "s"}, pool_size=2)
    a, b = shared.pool.acquire(), shared.pool.acquire()
    try:
        # scribble over the whole of a's image (data, heap, free lists): b must not notice
        a.view[a.scratch : a.eval_heap] = b"\xff" * (a.eval_heap - a.scratch)
        assert bytes(b.view[b.scratch : b.eval_heap]) != bytes(a.view[a.scratch : a.eval_heap])
        a.broken = "scribbled on by the test"
    finally:
        shared.pool.release(a)
        shared.pool.release(b)
    assert shared.evaluate("t/joined", {"prefix": "x", "n": 3}) == "x-1-s,x-2-s,x-3-s"


def _corrupt(image: memimage.MemoryImage, how: str) -> memimage.MemoryImage:
    fd = os.memfd_create("groqpolicy-wasm-image", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    size = image.size if how != "size" else image.size - 65536
    with os.fdopen(os.dup(image.fd), "rb") as src:
        raw = bytearray(src.read(size))
    if how == "content":
        raw[: len(raw) // 2] = bytes(len(raw) // 2)  # OPA's heap state among what is lost
    os.write(fd, raw)
    if how != "unsealed":
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SEAL | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
    return memimage.MemoryImage(fd, image.size, image.state)


@pytest.mark.parametrize("how", ["unsealed", "size", "content"])
def test_corrupt_image_fails_loudly(how: str) -> None:
    shared, _ = _pair({"f.rego": FILTER}, ["t/visible"], _filter_data(200), pool_size=3)
    assert shared.image is not None
    shared.image = _corrupt(shared.image, how)
    held = shared.pool.acquire()  # the one instance made at load: the next caller needs a new one
    try:
        with pytest.raises(wasm_errors.BundleLoadError, match="memory image"):
            shared.evaluate("t/visible", {"tenant": "t1", "clearance": 9})
    finally:
        shared.pool.release(held)
    assert shared.pool.live == 1  # the failed instance never joined the pool
    shared.image.close()


def test_memory_cap_still_holds_with_a_shared_image() -> None:
    big = 'package t\nimport rego.v1\nbig := count([x | some i in numbers.range(1, input.n); x := sprintf("%d-%s", [i, data.pad])])\n'
    shared, parsed = _pair({"b.rego": big}, ["t/big"], {"pad": "p" * 100}, pool_size=1, memory_limit=32 << 20)
    assert shared.evaluate("t/big", {"n": 1000}) == parsed.evaluate("t/big", {"n": 1000}) == 1000
    with pytest.raises(wasm_errors.OutOfMemory):
        shared.evaluate("t/big", {"n": 2_000_000}, timeout=30.0)
    assert shared.evaluate("t/big", {"n": 10}) == 10  # a fresh instance from the image


def _wat_module(globals_wat: str) -> bytes:
    return wasmtime.wat2wasm(f'(module (import "env" "memory" (memory 1)) {globals_wat} (func (export "f")))')


def test_only_modules_with_all_state_in_memory_are_shared() -> None:
    one = _wat_module("(global (mut i32) (i32.const 11)) (global i32 (i32.const 3))")
    two = _wat_module("(global (mut i32) (i32.const 65536)) (global (mut i64) (i64.const 11))")
    assert memimage.mutable_globals(one) == 1 and memimage.supported(one) is None
    assert memimage.mutable_globals(two) == 2
    assert "2 mutable globals" in (memimage.supported(two) or "")
    assert "cannot read" in (memimage.supported(b"\0asm\1\0\0\0\6\5") or "")


def test_undefined_and_no_data_revisions_share_too() -> None:
    shared, parsed = _pair({"u.rego": "package t\nimport rego.v1\nr := input.x if input.x > 1\n"}, ["t/r"], None, pool_size=2)
    assert shared.evaluate("t/r", {"x": 0}) is UNDEFINED
    assert shared.evaluate("t/r", {"x": 5}) == parsed.evaluate("t/r", {"x": 5}) == 5
    assert msgspec.json.decode(shared.evaluate_raw("t/r", b'{"x": 2}')) == [{"result": 2}]


def test_each_instance_maps_the_image_once_and_unmaps_it_when_closed() -> None:
    gc.collect()  # policies of earlier tests, and so their instances' mappings, go now, not midway
    before = _image_mappings()
    shared, parsed = _pair({"f.rego": FILTER}, ["t/visible"], _filter_data(100), pool_size=3)
    insts = [shared.pool.acquire() for _ in range(3)]
    for inst in insts:
        shared.pool.release(inst)
    assert _image_mappings() == before + 3
    shared.close()
    parsed.close()
    assert _image_mappings() == before


def test_a_restored_instance_is_byte_for_byte_a_set_up_one() -> None:
    """All of OPA's state is in linear memory: the same evaluations leave a restored instance's
    memory identical to that of an instance that parsed `data` itself."""
    shared, parsed = _pair({"h.rego": HEAP, "f.rego": FILTER.replace("package t", "package f")},
                           ["t/joined", "t/index", "f/visible"], {"suffix": "q", **_filter_data(300)}, pool_size=1)

    def memory(policy: WasmPolicy) -> bytes:
        inst = policy.pool.acquire()
        try:
            return bytes(inst.view[: inst.mem_size_now()])
        finally:
            policy.pool.release(inst)

    assert memory(shared) == memory(parsed)
    for k in range(40):
        ep, inp = (("t/joined", {"prefix": f"k{k}", "n": k + 1}) if k % 3 else ("f/visible", {"tenant": "t2", "clearance": k % 10}))
        assert shared.evaluate(ep, inp) == parsed.evaluate(ep, inp)
    assert memory(shared) == memory(parsed)


def test_a_host_that_cannot_map_the_image_parses_per_instance(monkeypatch, caplog) -> None:
    def refuse(image: memimage.MemoryImage, inst: Any) -> None:
        raise wasm_errors.BundleLoadError("wasm memory image: mmap failed: Operation not permitted")

    files = bundle_files(build_wasm_bundle({"f.rego": FILTER}, ["t/visible"], _filter_data(300)))
    monkeypatch.setattr(memimage, "restore", refuse)
    with caplog.at_level("WARNING", logger="groqpolicy.wasm"):
        policy = policy_from_files(files, pool_size=2)
    assert policy.image is None and "each instance parses its own data: wasm memory image: mmap failed" in caplog.text
    monkeypatch.undo()
    parsed = policy_from_files(files, pool_size=2, share_data=False)
    a, b = policy.pool.acquire(), policy.pool.acquire()  # the second one parses: the pool grows as before
    policy.pool.release(a)
    policy.pool.release(b)
    inp = {"tenant": "t3", "clearance": 7}
    assert policy.evaluate("t/visible", inp) == parsed.evaluate("t/visible", inp) != []


def test_closing_a_revision_releases_its_image_and_in_flight_instances_finish() -> None:
    shared, parsed = _pair({"f.rego": FILTER}, ["t/visible"], _filter_data(300), pool_size=2)
    image = shared.image
    assert image is not None
    inst = shared.pool.acquire()
    shared.close()  # a hot swap: the image's memfd goes now, the instance in flight keeps its mapping
    assert image.closed
    ep = shared.entrypoint_id("t/visible")
    inp = {"tenant": "t5", "clearance": 6}
    got = inst.evaluate_raw(ep, msgspec.json.encode(inp), 1000)
    assert got.startswith(b'{{"result": ') and got.endswith(b"}}")  # OPA's value format: a set of one binding
    assert msgspec.json.decode(got[len(b'{{"result": ') : -2]) == parsed.evaluate("t/visible", inp) != []
    shared.pool.release(inst)
    fresh = shared._new_instance()
    with pytest.raises(wasm_errors.PoolClosed, match="released"):
        memimage.restore(image, fresh)
    fresh.close()
