"""wrk, the closed-loop HTTP load generator written in C, from Debian's package, driven here.

A closed loop keeps N connections each sending its next request as soon as the last is answered,
so the server runs flat out and the number is how many requests per second it answers. On this
machine the generator shares the two cores with the servers it drives, so what it spends per request
is taken from them: vegeta (Go, every result recorded and encoded) spends ~190 µs of CPU per
request, wrk ~40 (benchmarks/README.md, "The load generator's own share"). vegeta stays the
open-loop generator (`benchmarks/vegeta.py`): a fixed schedule is what it is built for.

When no `wrk` is on PATH, Debian's packages are fetched with `apt-get download` and unpacked with
`dpkg-deb -x` into the tools dir (no root, nothing installed system-wide), once; as root on a
machine whose package lists were never fetched, after `apt-get update`. Each run's summary
comes from a `done` hook in the Lua script, as one JSON line on wrk's output.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.infra.toolchain import tools_dir

# wrk links LuaJIT; the package names are Debian 12's (the `|` alternative wrk's package allows)
PACKAGES = ("wrk", "libluajit-5.1-2", "libluajit-5.1-common")

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\n{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class Wrk:
    binary: Path
    env: dict[str, str]


def ensure_wrk() -> Wrk:
    """wrk from PATH, or Debian's package unpacked into the tools dir; raises RuntimeError with the reason."""
    try:
        return _ensure()
    except (OSError, subprocess.SubprocessError) as exc:  # a timeout, a binary that cannot run: said, the benchmark skips
        raise RuntimeError(f"wrk: {type(exc).__name__}: {exc}") from exc


def _ensure() -> Wrk:
    on_path = shutil.which("wrk")
    if on_path:
        return _checked(Wrk(Path(on_path), dict(os.environ)))
    root = tools_dir() / "wrk"
    if not (root / "usr" / "bin" / "wrk").is_file():
        _unpack(root)
    libs = sorted({str(p.parent) for p in root.glob("usr/lib/**/libluajit-5.1.so*")})
    # no empty entry: one would mean the current directory
    paths = [*libs, *(p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p)]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(paths))
    return _checked(Wrk(root / "usr" / "bin" / "wrk", env))


def _unpack(root: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise RuntimeError("no wrk on PATH, and no apt-get/dpkg-deb to fetch Debian's package")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, capture_output=True, text=True, timeout=300)
        if got.returncode != 0 and os.geteuid() == 0:  # a machine whose package lists were never fetched
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
            got = subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, capture_output=True, text=True, timeout=300)
        if got.returncode != 0:
            raise RuntimeError(f"apt-get download {' '.join(PACKAGES)} failed: {got.stderr.strip()[-300:]}")
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=".wrk-"))
        try:
            for deb in sorted(Path(tmp).glob("*.deb")):
                subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, capture_output=True, timeout=120)
            staging.replace(root)  # whole or not at all: a run stopped half-way leaves no half-unpacked tool
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"unpacking Debian's wrk into {root} failed: {exc}") from exc


def _checked(wrk: Wrk) -> Wrk:
    # `wrk --version` prints its version and usage, and exits 1
    out = subprocess.run([str(wrk.binary), "--version"], env=wrk.env, capture_output=True, text=True, timeout=30)
    if not out.stdout.startswith("wrk "):
        raise RuntimeError(f"{wrk.binary} does not run: {(out.stdout + out.stderr).strip()[-300:]}")
    return wrk


def post_script(work: Path, body: bytes, headers: dict[str, str]) -> Path:
    """A Lua script sending `body` with `headers` on every request (the body read from a file, so no
    quoting can go wrong)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "body.json").write_bytes(body)
    lines = ['wrk.method = "POST"', f"local f = assert(io.open({lua_string(work / 'body.json')}, 'rb'))",
             "wrk.body = f:read('*a')", "f:close()"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    return write_script(work / "post.lua", "\n".join(lines) + "\n")


def write_script(path: Path, lua: str) -> Path:
    """`lua` with the hook that prints the run's summary for `closed_loop`, written to `path`."""
    path.write_text(lua + _DONE)
    return path


def closed_loop(wrk: Wrk, script: Path, url: str, connections: int, seconds: float) -> dict[str, Any]:
    """`connections` connections, one wrk thread, sending back to back for `seconds`: requests
    answered, of them answered with a status >= 400, socket errors, and the run's length in s."""
    out = subprocess.run([str(wrk.binary), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                          "-s", str(script), url], env=wrk.env, capture_output=True, text=True, timeout=seconds + 60)
    summary = next((line for line in reversed(out.stdout.splitlines()) if line.startswith('{"requests"')), None)
    if out.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stdout + out.stderr).strip()[-500:]}")
    report = json.loads(summary)
    report["duration_s"] = report.pop("duration_us") / 1e6
    return report


def lua_string(text: str | Path) -> str:
    """A Lua string literal: every byte as a decimal escape, so nothing in it can end the literal."""
    return '"' + "".join(f"\\{b}" for b in str(text).encode()) + '"'
