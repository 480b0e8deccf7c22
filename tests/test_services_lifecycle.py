"""The composition root: every collaborator is in place when `Services.build` returns (nothing is
attached at start), and the one lifecycle starts in order, stops in reverse, and undoes a start
that fails half-way."""

from __future__ import annotations

import asyncio
import time

import pytest

from controlplane.audit.wiring import EscalationPublisher
from controlplane.impact.tap import ObservingRecorder
from controlplane.services import LAST_SLICE_S, Lifecycle, Services, Step
from tests.controlplane_helpers import make_settings


def test_the_pipeline_is_complete_when_built(tmp_path):
    services = Services.build(make_settings(tmp_path / "state", nats_url="nats://127.0.0.1:1"))
    pipeline = services.runtime.pipeline
    # the audit trail records first; the replay store and shadow mode see what it recorded
    assert isinstance(pipeline.recorder, ObservingRecorder) and pipeline.recorder.inner is services.recorder
    assert pipeline.recorder.store is services.replay and pipeline.recorder.observers == [services.shadows]
    assert isinstance(pipeline.escalate, EscalationPublisher)
    assert pipeline.models.ask_model.__wrapped__ == services.runtime.models.request  # tapped for the replay store
    assert pipeline.evaluator is services.runtime.evaluator and services.runtime.evaluator.host.infer_transport is not None
    names = [name for name, _ in services.components()]
    assert names.index("NATS connection") < names.index("audit trail") < names.index("policy.evaluate")
    assert names.index("evaluator follower") < names.index("policy.evaluate")
    assert names.index("NATS connection") < names.index("replay store") < names.index("policy.evaluate")
    assert services.impact.batch is services.batch and "batch API client" in names  # impact via=batch
    # started, so the replay helpers' fork server starts with the control plane, not at the first replay
    assert ("impact analysis", services.impact) in services.components()


async def test_the_impact_service_starts_the_replay_helpers_fork_server(tmp_path):
    from tests.test_replay_helpers import fork_servers

    services = Services.build(make_settings(tmp_path / "state", nats_url="nats://127.0.0.1:1"))
    if services.settings.replay_helpers < 1:
        pytest.skip("one CPU: no replay helpers, so no fork server")
    await services.impact.start()
    assert services.impact._warming is not None
    await services.impact._warming  # the server started, and forked a probe
    assert len(fork_servers()) == 1


class Recording:
    def __init__(self, name: str, log: list[str], fail_start: bool = False, fail_stop: bool = False) -> None:
        self.name, self.log, self.fail_start, self.fail_stop = name, log, fail_start, fail_stop

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")


def test_components_start_in_order_and_stop_in_reverse_even_when_one_stop_fails():
    log: list[str] = []
    lifecycle = Lifecycle([("a", Recording("a", log)), ("b", Recording("b", log, fail_stop=True)),
                           ("c", Step(lambda: asyncio.sleep(0)))])
    asyncio.run(lifecycle.start())
    asyncio.run(lifecycle.stop())
    assert log == ["start a", "start b", "stop b", "stop a"]
    asyncio.run(lifecycle.stop())  # stopping twice stops nothing twice
    assert log == ["start a", "start b", "stop b", "stop a"]


def test_a_start_that_fails_stops_what_was_started_and_fails():
    log: list[str] = []
    lifecycle = Lifecycle([("a", Recording("a", log)), ("b", Recording("b", log)), ("c", Recording("c", log, fail_start=True)),
                           ("d", Recording("d", log))])
    with pytest.raises(RuntimeError, match="c cannot start"):
        asyncio.run(lifecycle.start())
    assert log == ["start a", "start b", "start c", "stop b", "stop a"]


class Hanging(Recording):
    """A stop that waits on something that never answers (a NATS that takes messages and answers none)."""

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        try:
            await asyncio.sleep(3600)
        finally:
            self.log.append(f"cut {self.name}")


def test_a_stop_has_one_budget_and_every_component_still_gets_its_stop(caplog):
    log: list[str] = []
    lifecycle = Lifecycle([("a", Recording("a", log)), ("b", Hanging("b", log)), ("c", Hanging("c", log)),
                           ("d", Recording("d", log))], stop_budget_s=0.5)
    asyncio.run(lifecycle.start())
    t0 = time.monotonic()
    asyncio.run(lifecycle.stop())
    took = time.monotonic() - t0
    # d stops at once, c takes the rest of the budget, b (after it is spent) gets its last slice, a stops
    assert log[4:] == ["stop d", "stop c", "cut c", "stop b", "cut b", "stop a"]
    assert 0.5 <= took < 0.5 + LAST_SLICE_S + 0.4
    cut = [r.getMessage() for r in caplog.records if "cut off" in r.getMessage()]
    assert cut[0].startswith("stopping c: cut off after 0.5 s") and cut[1].startswith("stopping b: cut off after 0.1 s")


def test_a_component_s_own_timeout_is_a_failure_not_a_cut(caplog):
    class OwnTimeout(Recording):
        async def stop(self) -> None:
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)

    asyncio.run(lifecycle_of(OwnTimeout("a", [])).stop())
    assert [r.getMessage() for r in caplog.records] == ["stopping a failed"]


def lifecycle_of(component: Recording) -> Lifecycle:
    lifecycle = Lifecycle([("a", component)])
    asyncio.run(lifecycle.start())
    return lifecycle


class Stubborn(Recording):
    """A stop that catches its cancellation and goes on waiting (nats-py's drain does: it catches
    the cancellation, then flushes for up to 10 s)."""

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.log.append(f"caught {self.name}")
            await asyncio.sleep(3600)


def test_a_stop_that_ignores_its_cancellation_is_left_running_and_the_others_still_stop(caplog):
    log: list[str] = []
    lifecycle = Lifecycle([("a", Recording("a", log)), ("b", Stubborn("b", log)), ("c", Recording("c", log))],
                          stop_budget_s=0.3)

    async def run() -> float:
        await lifecycle.start()
        t0 = time.monotonic()
        await lifecycle.stop()
        return time.monotonic() - t0

    took = asyncio.run(run())
    assert log[3:] == ["stop c", "stop b", "caught b", "stop a"]
    assert took < 0.3 + 2 * LAST_SLICE_S + 0.4
    assert any(r.getMessage().startswith("stopping b: cut off after 0.3 s") and r.getMessage().endswith("left running")
               for r in caplog.records)
