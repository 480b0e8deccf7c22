"""Keep child processes running: restart a child that dies, with backoff and a restart budget, and
publish what the supervisor sees in a small status file that /health and the dashboard read.

One thread, one loop (`Supervisor.poll`, a few times a second), no signal handlers of its own: the
owner (`groqpolicy up`) keeps SIGINT/SIGTERM. Each child is a `Child`: how to launch it (never
blocking), how to tell it is ready (a probe that never blocks for long), what to do once it is
(e.g. NATS's bootstrap) and once it is seen dead (e.g. take it out of a shared listener's balance).
A child goes through

    starting -> running -> (dies) restarting -> running ...
                                   restarting -> (budget spent) failed

A death waits `RestartPolicy.delay()` before the relaunch (doubling from `first_delay_s` up to
`max_delay_s`; a child that stayed up for `stable_s` starts again from the first delay), so a
crash loop does not spin; a child that dies more than `budget` times within `window_s` is given up
on, loudly, and the others keep running (the control plane still answers, failing closed). A child
that does not become ready within its `start_timeout_s` is killed and counts as a death.

The status file (`<state>/supervisor.json`, mode 0600, replaced atomically at every change) names
the supervisor's pid; a reader trusts it only while that pid lives, so a file left behind by a
killed supervisor never describes a system that is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bridge.kernel.errors import ToolchainError
from controlplane.infra.processes import ManagedProcess

log = logging.getLogger(__name__)

STATUS_FILE = "supervisor.json"
POLL_S = 0.1
# the states a child is in; "restarting" and "failed" make the system degraded
STARTING, RUNNING, RESTARTING, FAILED, STOPPED = "starting", "running", "restarting", "failed", "stopped"


@dataclass(frozen=True)
class RestartPolicy:
    first_delay_s: float = 0.1
    max_delay_s: float = 10.0
    budget: int = 5  # restarts allowed within `window_s`; one more death gives up
    window_s: float = 120.0
    stable_s: float = 30.0  # up this long: the next death waits the first delay again

    def delay(self, consecutive: int) -> float:
        """The wait before relaunch after the `consecutive`-th death in a row (1-based)."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, consecutive - 1))


@dataclass
class Child:
    """What the supervisor needs to know to run one process."""

    name: str
    launch: Callable[[], ManagedProcess]  # start the process; returns at once
    ready: Callable[[ManagedProcess], bool]  # a probe that returns quickly (a port, a log line, /health)
    after_ready: Callable[[ManagedProcess], None] | None = None  # e.g. re-run NATS's bootstrap
    start_timeout_s: float = 60.0
    # called once each time the child is seen dead, before any relaunch (also when it is given up on):
    # what the dead process left for its peers must not outlive it (controlplane.ops.system)
    on_exit: Callable[[], None] | None = None
    # replicas of one another (the control-plane processes, the workers): started in turn like every
    # child, stopped together, so that their graces add up once, not once per replica
    group: str = ""


class ChildStatus(msgspec.Struct, kw_only=True):
    name: str
    state: str
    pid: int | None = None
    restarts: int = 0  # relaunches after a death, over the supervisor's life
    last_exit: int | None = None  # the exit status of the last death (negative: the signal)
    since: float = 0.0  # unix time of the last state change
    log: str = ""


class SupervisorStatus(msgspec.Struct, kw_only=True):
    pid: int
    started_at: float
    children: list[ChildStatus] = []

    @property
    def degraded(self) -> list[str]:
        """The children that are not serving because they died (restarting or given up on)."""
        return [c.name for c in self.children if c.state in (RESTARTING, FAILED)]


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_FILE


def write_status(path: Path, status: SupervisorStatus) -> None:
    """Replace the status file atomically (a reader never sees half of it), mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.encode(status))
    os.replace(tmp, path)


def read_status(state_dir: Path) -> SupervisorStatus | None:
    """The running supervisor's view, or None (no supervisor, or the file is stale or unreadable)."""
    try:
        status = msgspec.json.decode(status_path(state_dir).read_bytes(), type=SupervisorStatus)
    except (OSError, msgspec.DecodeError):
        return None
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's: a supervisor of another user is still a supervisor
        pass
    return status


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


@dataclass
class _Run:
    """One child's life under the supervisor."""

    child: Child
    proc: ManagedProcess | None = None
    state: str = STARTING
    since: float = field(default_factory=time.time)
    launched_at: float = 0.0  # monotonic
    ready_at: float = 0.0
    relaunch_at: float = 0.0
    died_at: float = 0.0
    deaths: list[float] = field(default_factory=list)  # monotonic times, within the window
    consecutive: int = 0
    restarts: int = 0
    last_exit: int | None = None

    def status(self) -> ChildStatus:
        return ChildStatus(name=self.child.name, state=self.state, pid=self.proc.proc.pid if self.proc else None,
                           restarts=self.restarts, last_exit=self.last_exit, since=self.since,
                           log=str(self.proc.log_path) if self.proc else "")


class Supervisor:
    """Children started in order and kept running; `stop_all` stops them in reverse."""

    def __init__(self, status_file: Path, policy: RestartPolicy | None = None,
                 say: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.status_file = status_file
        self.policy = policy or RestartPolicy()
        self.say = say or (lambda line: log.warning("%s", line))
        self.clock = clock
        self.runs: list[_Run] = []
        self.started_at = time.time()

    # -- the first start: in order, each one ready before the next ----------------------------------

    def start(self, child: Child) -> ManagedProcess:
        """Launch `child` and wait until it is ready; ToolchainError if it dies or takes too long."""
        run = _Run(child)
        self.runs.append(run)
        run.proc = child.launch()
        run.launched_at = self.clock()
        deadline = run.launched_at + child.start_timeout_s
        while not self._probe(run):
            if run.proc.proc.poll() is not None:
                run.state, run.last_exit = FAILED, run.proc.proc.returncode
                self._publish()
                raise ToolchainError(f"{child.name} {describe_exit(run.last_exit)} while starting; see {run.proc.log_path}")
            if self.clock() > deadline:
                raise ToolchainError(f"{child.name} was not ready after {child.start_timeout_s:.0f}s; see {run.proc.log_path}")
            time.sleep(POLL_S)
        if child.after_ready is not None:  # at the first start its failure stops the start (it raises)
            child.after_ready(run.proc)
        self._ready(run, after=False)
        return run.proc

    def process(self, name: str) -> ManagedProcess | None:
        """The current process of the child called `name`."""
        return next((r.proc for r in self.runs if r.child.name == name), None)

    # -- supervision -----------------------------------------------------------------------------

    def poll(self) -> None:
        """One look at every child: notice deaths, relaunch when their delay is over, mark the ready."""
        for run in self.runs:
            if run.state in (RUNNING, STARTING, RESTARTING) and run.proc is not None and run.relaunch_at == 0.0:
                if run.proc.proc.poll() is not None:
                    self._died(run)
                elif run.state != RUNNING:
                    self._check_start(run)
            if run.state == RESTARTING and run.relaunch_at and self.clock() >= run.relaunch_at:
                self._relaunch(run)

    def run_forever(self, interval: float = POLL_S) -> None:
        while True:
            self.poll()
            time.sleep(interval)

    def stop_all(self) -> None:
        """Every child, in the reverse of their start order; the replicas of one group together."""
        batches: list[list[_Run]] = []
        for run in reversed(self.runs):
            if batches and run.child.group and batches[-1][0].child.group == run.child.group:
                batches[-1].append(run)
            else:
                batches.append([run])
        for batch in batches:
            if len(batch) == 1:
                self._stop(batch[0])
            else:
                with ThreadPoolExecutor(len(batch), thread_name_prefix="stop") as pool:
                    list(pool.map(self._stop, batch))
            for run in batch:  # here, not on the stopping threads: one writer of the status file
                self._set(run, STOPPED)
        self.status_file.unlink(missing_ok=True)

    def _stop(self, run: _Run) -> None:
        if run.proc is not None:
            t0 = time.monotonic()
            gone = run.proc.stop()
            if not gone:  # killed, not reaped yet: said, and the others are stopped all the same
                self.say(f"{run.child.name} (pid {run.proc.proc.pid}) was killed but had not exited "
                         f"{time.monotonic() - t0:.0f}s after it was asked to stop")
            elif (took := time.monotonic() - t0) > 2:
                self.say(f"{run.child.name} took {took:.1f}s to stop")

    # -- transitions -----------------------------------------------------------------------------

    def _probe(self, run: _Run) -> bool:
        assert run.proc is not None
        try:
            return run.child.ready(run.proc)
        except (OSError, ValueError):
            return False

    def _ready(self, run: _Run, *, after: bool = True) -> None:
        assert run.proc is not None
        if after and run.child.after_ready is not None:
            try:
                run.child.after_ready(run.proc)
            except Exception as exc:  # noqa: BLE001 - reported; the child runs, and its clients say what is missing
                self.say(f"{run.child.name}: after start: {exc}")
        run.ready_at = self.clock()
        back = run.state == RESTARTING
        self._set(run, RUNNING)
        if back:
            self.say(f"{run.child.name} is back (pid {run.proc.proc.pid}, {run.ready_at - run.died_at:.1f}s after it died)")

    def _check_start(self, run: _Run) -> None:
        assert run.proc is not None
        if self._probe(run):
            self._ready(run)
        elif self.clock() - run.launched_at > run.child.start_timeout_s:
            self.say(f"{run.child.name} was not ready after {run.child.start_timeout_s:.0f}s; killing it")
            run.proc.kill()
            self._died(run)

    def _died(self, run: _Run, why: str = "") -> None:
        if run.child.on_exit is not None:
            try:
                run.child.on_exit()
            except Exception as exc:  # noqa: BLE001 - reported; the restart goes on all the same
                self.say(f"{run.child.name}: after exit: {exc}")
        now = self.clock()
        if not why:
            assert run.proc is not None
            run.last_exit = run.proc.proc.returncode
            why = describe_exit(run.last_exit)
        run.died_at = now
        if run.ready_at and now - run.ready_at >= self.policy.stable_s:
            run.consecutive = 0
        run.consecutive += 1
        run.deaths = [t for t in run.deaths if now - t < self.policy.window_s] + [now]
        name, where = run.child.name, run.proc.log_path if run.proc else "its log"
        if len(run.deaths) > self.policy.budget:
            run.relaunch_at = 0.0
            self._set(run, FAILED)
            self.say(f"GIVING UP on {name}: it {why}, its death number {len(run.deaths)} within "
                     f"{self.policy.window_s:.0f}s; see {where}. The rest keeps running; /health says degraded.")
            return
        delay = self.policy.delay(run.consecutive)
        run.relaunch_at = now + delay
        self._set(run, RESTARTING)
        self.say(f"{name} {why}; restarting in {delay:.2f}s (restart {len(run.deaths)} of {self.policy.budget} "
                 f"allowed in {self.policy.window_s:.0f}s); log: {where}")

    def _relaunch(self, run: _Run) -> None:
        run.relaunch_at = 0.0
        run.restarts += 1
        run.launched_at = self.clock()
        try:
            run.proc = run.child.launch()
        except Exception as exc:  # noqa: BLE001 - a launch that fails is a death like any other
            self._died(run, f"could not be launched ({exc})")
            return
        self._publish()

    def _set(self, run: _Run, state: str) -> None:
        run.state, run.since = state, time.time()
        self._publish()

    def _publish(self) -> None:
        status = SupervisorStatus(pid=os.getpid(), started_at=self.started_at, children=[r.status() for r in self.runs])
        try:
            write_status(self.status_file, status)
        except OSError as exc:  # the state dir went away or filled up: supervision goes on regardless
            log.warning("supervisor status %s: not written (%s)", self.status_file, exc)


__all__ = ["Child", "ChildStatus", "RestartPolicy", "Supervisor", "SupervisorStatus", "read_status", "status_path",
           "write_status"]
