"""The peers of the realistic-policy benchmark: each in a venv of its own, built by the harness from
nothing on first use (then reused), and one contender process per peer and policy class.

Why separate venvs: opa-py-wasm pins wasmtime < 47 (this project runs a newer one), and
opa-golib-python-bindings declares Python >= 3.14 although its ctypes wrapper runs on 3.11, so it
is installed with `--ignore-requires-python`, which must not touch the project's venv. A peer that
cannot be installed (no network, no wheel) is reported as skipped with the reason; it never fails
the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("GROQPOLICY_BENCH_CACHE", Path(tempfile.gettempdir()) / "groqpolicy-bench"))
CONTENDER = Path(__file__).resolve().parent / "contender.py"

# kind -> (pip requirements, extra pip arguments); None: runs in the project's own venv
PEERS: dict[str, tuple[list[str], list[str]] | None] = {
    "groqpolicy": None,
    "groqpolicy-base": None,  # groqpolicy from another checkout (GROQPOLICY_BENCH_BASELINE), for before/after
    "regorus": (["gordon-to-regorus==0.13.0"], []),
    "opa-golib": (["opa-golib-python-bindings==0.4.4"], ["--ignore-requires-python"]),
    "opa-py-wasm": (["opa-py-wasm==1.2.1"], []),
    "regopy": None,  # a dev dependency of the project
    "opa-rest": None,  # the real opa binary; the client is the standard library
}
INSTALL_TIMEOUT_S = 600
WARMUP = 100  # unrecorded evaluations after loading


def python_for(kind: str) -> Path:
    """The interpreter a contender runs under; builds the peer's venv the first time (raises with the reason)."""
    spec = PEERS[kind]
    if spec is None:
        return Path(sys.executable)
    reqs, extra = spec
    venv = CACHE / "venvs" / kind
    stamp = venv / ".installed"
    want = json.dumps([reqs, extra])
    if stamp.exists() and stamp.read_text() == want:
        return venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *extra, *reqs],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(reqs)} failed: {done.stderr.strip()[-300:]}")
    stamp.write_text(want)
    return venv / "bin" / "python"


@dataclass
class Contender:
    """One contender process: started on a prepared work dir, answers orders on its stdin."""

    kind: str
    proc: subprocess.Popen | None = None
    result: object = None
    version: str = ""
    error: str = ""
    times: list[float] = field(default_factory=list)

    def start(self, work: Path, opa: Path) -> None:
        try:
            python = python_for(self.kind)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.error = f"not installed: {exc}"
            return
        # groqpolicy-base: the same code path, on the checkout GROQPOLICY_BENCH_BASELINE names
        # (first on the path, so its `bridge` package is the one imported)
        root = os.environ["GROQPOLICY_BENCH_BASELINE"] + os.pathsep + str(ROOT) if self.kind == "groqpolicy-base" else str(ROOT)
        env = dict(os.environ, PYTHONPATH=root, OPA_BIN=str(opa))
        log = work / f"{self.kind}.log"
        with open(log, "w") as err:
            self.proc = subprocess.Popen([str(python), str(CONTENDER), self.kind, str(work)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=work)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            hello = {"ok": False, "error": f"the contender process exited ({self.proc.wait()}): {tail[0][:200]}"}
        else:
            hello = json.loads(line)
        if not hello["ok"]:
            self.error = " ".join(hello["error"].split())
            self.stop()
            return
        self.result, self.version = hello["result"], hello["version"]
        self.run(WARMUP, 0.5)  # caches, allocator and branch predictors warm before the first block

    def run(self, n: int, budget_s: float) -> list[float]:
        if self.proc is None or self.error:
            return []
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"n": n, "budget_s": budget_s}) + "\n")
        self.proc.stdin.flush()
        return [t / 1e9 for t in json.loads(self.proc.stdout.readline())]

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.stdin:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None
