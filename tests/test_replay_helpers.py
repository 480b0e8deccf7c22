"""A long replay's helper processes (`controlplane.impact.helpers`): real processes forked from the
fork server, each loading the candidate's signed archive into the real evaluator (wasmtime, a module
built by the real `opa` from the product's library). A replay with helpers decides exactly what the
replay alone decides, counts the same recorded calls, asks the same judgments anew (only the
replaying process asks), and survives a helper killed in the middle of it."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.kernel.config import Settings
from bridge.kernel.errors import ConfigError
from bridge.kernel.vocabulary import CONSTITUTIONAL_HASH as H
from bridge.opabundle.keys import generate_keypair
from bridge.opawasm import UNDEFINED
from controlplane.audit.ingest import decision_of
from controlplane.impact import helpers as helpers_module
from controlplane.impact import replay
from controlplane.impact.helpers import Helpers
from controlplane.impact.records import Judgment, Recorded, judgment_key
from controlplane.impact.replay import Oracle, decide_all
from controlplane.policies import rego
from tests.test_evaluate_batched import build
from tests.test_replay_pipeline import BRIDGE, JUDGE, SOURCE, evaluator_with, record
from tests.wasm_helpers import signed_bundle

TEXTS = 40
N = 3 * replay.CHUNK + 100  # four chunks: the replaying process and two in flight per helper all get one
# enough chunks that a helper still holds some when the replaying process has decided its first
LONG = 8 * replay.CHUNK


@pytest.fixture(scope="module")
def signed(opa_bin) -> tuple[bytes, Any]:
    """The judge of `test_replay_pipeline` with the library and the constitution, signed."""
    key = generate_keypair("RS256", "helpers-test")
    return signed_bundle(build({JUDGE: SOURCE}), key), key


class Candidate:  # what `decide_all` reads of a candidate
    records = [record()]


class Answerer:
    """A model that denies every seventh note and allows the others, counting what it is asked."""

    name = "online"

    def __init__(self) -> None:
        self.calls = 0

    def call(self, tier: str, body: Any, timeout: float) -> tuple[int, Any]:
        self.calls += 1
        return 200, reply(body["context"]["text"])

    async def request(self, tier: str, body: bytes) -> tuple[int, bytes, int]:
        raise AssertionError("the judge asks through http.send, not the model stage")


def text(i: int) -> str:
    return f"note {i % TEXTS}"


def reply(txt: str) -> dict[str, Any]:
    deny = int(txt.split()[1]) % 7 == 0
    return {"decision": "deny" if deny else "allow", "confidence": 0.9, "rationale": txt, "model": "recorded-model"}


def judgments(texts: range) -> dict[str, Judgment]:
    """Recorded answers for `texts`, keyed by the request the judge's `http.send` makes."""
    out = {}
    for i in texts:
        body = {"question": "Is this text harmful?", "context": {"text": text(i)}, "policy": "judge",
                "constitutional_hash": H, "deadline_ms": 1500}
        key = judgment_key("fast", body)  # the judge asks at `fast` (its policy's tier is nano)
        out[key] = Judgment(key=key, tier="fast", reply=reply(text(i)))
    return out


def decisions(n: int = N) -> list[Recorded]:
    return [Recorded(id=str(i), ts=0.0, source="batch", input={"principal": f"svc-{i % 13}", "text": text(i)},
                     decision="allow", tier="nano", constitutional_hash=H) for i in range(n)]


def helpers_for(built: tuple[bytes, Any], oracle: Oracle) -> Helpers:
    archive, key = built
    return Helpers(1, archive=archive, key=key.verification_key(), bridge_url=BRIDGE, records=Candidate.records,
                   replies=dict(oracle.replies), final_misses=oracle.reask is None)


async def run(built: tuple[bytes, Any], oracle: Oracle, found: list[Recorded], *, helped: bool, progress: Any = None,
              aides: Helpers | None = None) -> tuple[list[tuple[str, dict[str, str]]], Helpers | None]:
    ev = evaluator_with(built, oracle, memo=True)  # as the impact service's evaluator
    if helped and aides is None:
        aides = helpers_for(built, oracle)
    try:
        outcomes = await decide_all(Candidate(), ev, oracle, found, progress, aides)  # type: ignore[arg-type]
    finally:
        ev.close()
        if aides is not None:
            aides.close()
    return [(o.decision, o.by_type) for o in outcomes], aides


async def test_helpers_decide_what_the_replay_alone_decides(signed):
    found = decisions()
    alone = Oracle(judgments(range(TEXTS)), None)
    expected, _ = await run(signed, alone, found, helped=False)
    oracle = Oracle(judgments(range(TEXTS)), None)
    got, aides = await run(signed, oracle, found, helped=True)
    assert got == expected
    assert {t["ethical_constraints"] for _, t in got} == {"allow", "deny"}  # the recorded answers decide, both ways
    assert aides is not None and aides.lost == 0 and aides.undecided == 0
    assert 0 < oracle.helped < N  # both processes decided a share
    assert oracle.recorded == alone.recorded == TEXTS  # each recorded judgment once, whichever process used it
    assert oracle.asked == set() and oracle.failed == 0


async def test_with_helpers_the_replaying_process_evaluates_on_its_own_thread_only(signed):
    """The helpers take the other cores, so the replaying process decides its chunks on the replay's
    thread alone: no chunk thread beside it (`ReplayPipeline(split=False)`) to contend with them for
    the cores and the GIL. Alone, the same replay does use one (both cores are its own)."""
    threads: set[int] = set()

    def counted() -> Oracle:
        oracle = Oracle(judgments(range(TEXTS)), None)
        memo_get = oracle.memo.get

        def get(request: bytes) -> bytes | None:  # each evaluation asks the memo, on the evaluating thread
            threads.add(threading.get_ident())
            return memo_get(request)

        oracle.memo.get = get  # type: ignore[method-assign]
        return oracle

    helped = counted()
    await run(signed, helped, decisions(LONG), helped=True)
    assert 0 < helped.helped < LONG and len(threads) == 1, threads  # this process decided chunks, on one thread
    threads.clear()
    await run(signed, counted(), decisions(LONG), helped=False)
    assert len(threads) >= 2  # alone: the replay's thread and chunk threads


async def test_agents_decisions_are_decided_batched_as_one_by_one_and_by_helpers_too(signed):
    """Agents' logged queries of the judge's decision path (and of a path the candidate no longer
    serves) beside the API's decisions: batched on the replay's thread, each decides what the
    entrypoint decides for that input alone, and helpers decide them the same."""
    agents = [Recorded(id=f"a{i}", ts=0.0, source="opa-agent", input={"principal": f"p{i}", "text": text(i)},
                       decision="allow", path=rego.decision_path(JUDGE)) for i in range(2 * replay.CHUNK)]
    gone = [Recorded(id="g", ts=0.0, source="opa-agent", input={"text": "x"}, decision="allow", path="gone/decision")]
    found = decisions(replay.CHUNK) + agents + gone
    alone = Oracle(judgments(range(TEXTS)), None)
    expected, _ = await run(signed, alone, found, helped=False)
    assert expected[-1] == ("undefined", {})
    ev = evaluator_with(signed, Oracle(judgments(range(TEXTS)), None))
    try:
        for d, (decision, by_type) in list(zip(found, expected, strict=True))[replay.CHUNK:-1:37]:
            value = ev.evaluate(rego.wasm_entrypoint(JUDGE), d.input)  # the agent's query, for this input alone
            assert decision == by_type["ethical_constraints"] == decision_of(value, value is not UNDEFINED)[0]
    finally:
        ev.close()
    assert {d for d, _ in expected[replay.CHUNK:-1]} == {"allow", "deny"}
    oracle = Oracle(judgments(range(TEXTS)), None)
    got, _ = await run(signed, oracle, found, helped=True)
    assert got == expected and 0 < oracle.helped and oracle.recorded == alone.recorded


async def test_a_judgment_a_helper_lacks_is_asked_here_once_and_counted_as_alone(signed):
    """Ten questions are not recorded: only the replaying process asks (once each); every chunk that
    needs one of them is handed back by the helper and decided here."""
    found = decisions()
    alone_model, helped_model = Answerer(), Answerer()
    alone = Oracle(judgments(range(10, TEXTS)), alone_model)
    expected, _ = await run(signed, alone, found, helped=False)
    oracle = Oracle(judgments(range(10, TEXTS)), helped_model)
    got, aides = await run(signed, oracle, found, helped=True)
    assert got == expected
    assert helped_model.calls == alone_model.calls == 10 and len(oracle.asked) == len(alone.asked) == 10
    assert oracle.recorded == alone.recorded == TEXTS - 10 and oracle.failed == 0
    assert aides is not None and aides.undecided >= 1 and aides.lost == 0


async def test_a_replay_survives_its_helper_killed_midway(signed):
    found = decisions(LONG)
    alone = Oracle(judgments(range(TEXTS)), None)
    expected, _ = await run(signed, alone, found, helped=False)
    killed: list[int] = []
    oracle = Oracle(judgments(range(TEXTS)), None)
    aides = helpers_for(signed, oracle)

    async def kill_helpers(done: int) -> None:  # at the first chunk decided, whoever decided it
        if not killed:
            for pid in aides.pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    got, _ = await run(signed, oracle, found, helped=True, progress=kill_helpers, aides=aides)
    assert got == expected  # nothing lost: the killed helper's chunks were decided here
    assert killed and aides.lost >= 1 and not aides.alive


async def test_a_helper_that_hangs_is_killed_and_its_chunks_decided_here(signed, monkeypatch):
    monkeypatch.setattr(helpers_module, "CHUNK_TIMEOUT_S", 1.0)
    found = decisions(LONG)
    alone = Oracle(judgments(range(TEXTS)), None)
    expected, _ = await run(signed, alone, found, helped=False)
    stopped: list[int] = []
    oracle = Oracle(judgments(range(TEXTS)), None)
    aides = helpers_for(signed, oracle)

    async def stop_helpers(done: int) -> None:  # frozen, not dead: its chunks never come back
        if not stopped:
            for pid in aides.pids():
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

    got, _ = await run(signed, oracle, found, helped=True, progress=stop_helpers, aides=aides)
    assert got == expected and stopped and aides.lost >= 1
    assert not any(Path(f"/proc/{pid}").exists() for pid in stopped)  # killed, not left frozen


async def test_after_the_fork_server_is_killed_the_next_replay_has_helpers_again(signed):
    helpers_module.warm()
    (server,) = fork_servers()
    os.kill(server, signal.SIGKILL)
    oracle = Oracle(judgments(range(TEXTS)), None)
    got, aides = await run(signed, oracle, decisions(), helped=True)
    assert len(got) == N and aides is not None and aides.lost == 0 and oracle.helped > 0  # started again, on demand
    assert len(fork_servers()) == 1 and server not in fork_servers()


def fork_servers() -> list[int]:
    """This process's children that are multiprocessing fork servers."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid() \
                    and b"forkserver" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_the_module_handed_to_helpers_is_readable_by_this_user_only(signed):
    oracle = Oracle({}, None)
    aides = helpers_for(signed, oracle)
    try:
        where = Path(aides._dir)
        (module,) = list(where.iterdir())
        assert stat.S_IMODE(where.stat().st_mode) == 0o700  # a compiled module is native code
        assert module.suffix == ".cwasm" and module.stat().st_size > 0
    finally:
        aides.close()
    assert not where.exists()


def test_the_helpers_setting():
    assert Settings.from_env({}).replay_helpers == max(0, (os.cpu_count() or 1) - 1)  # the cores beside this one
    assert Settings.from_env({"GROQPOLICY_REPLAY_HELPERS": "0"}).replay_helpers == 0  # a replay runs alone
    with pytest.raises(ConfigError, match="REPLAY_HELPERS"):
        Settings.from_env({"GROQPOLICY_REPLAY_HELPERS": "-2"})


@pytest.mark.parametrize("how", ["drop", "close"])
def test_a_helper_killed_in_the_middle_of_its_answer_leaves_no_thread_waiting_for_the_rest(signed, how):
    """A helper killed while it writes an answer leaves part of a message in the answers' pipe. The
    executor's manager thread then waits for the rest, for ever, and the process hangs at exit
    (interpreter shutdown joins that thread): a serving process until its supervisor's SIGKILL, a
    test run for good. With the helpers killed, this process's own end of the pipe is closed too,
    so the read ends (the pool broken) instead."""
    aides = helpers_for(signed, Oracle(judgments(range(TEXTS)), None))
    pool = aides._pool
    assert pool is not None
    pool.submit(os.getpid).result(timeout=60)  # the helper and the manager thread are up
    manager = pool._executor_manager_thread
    assert manager is not None and manager.is_alive()
    # what a helper killed in the middle of its answer leaves: a length, and less than that after it
    os.write(pool._result_queue._writer.fileno(), (1 << 20).to_bytes(4, "big", signed=True) + b"part of an answer")
    for helper in [pid for pid in aides.pids() if Path(f"/proc/{pid}").exists()]:
        os.kill(helper, signal.SIGKILL)  # it is gone, as a killed helper is: nobody finishes that message
    aides._drop() if how == "drop" else aides.close()
    manager.join(20)
    assert not manager.is_alive()
