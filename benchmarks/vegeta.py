"""vegeta, the open-loop HTTP load generator, built from its Go module on first use and driven here.

`go install github.com/tsenart/vegeta/v12@<pinned>` puts it into the project's tools dir (next to
the pinned opa), once. vegeta sends requests on a fixed schedule whatever the server's answers do
(open loop: it adds workers instead of waiting), so a slow answer cannot lower the offered load, and
each latency is measured from the moment its request was due to go out.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from controlplane.infra.toolchain import go_binary, tools_dir

VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"


def ensure_vegeta() -> Path:
    """The vegeta binary (built once into the tools dir); raises RuntimeError with the reason."""
    binary = tools_dir() / "bin" / "vegeta"
    if binary.is_file():
        return binary
    go = go_binary()
    if go is None:
        raise RuntimeError("Go is not installed: cannot `go install` vegeta")
    done = subprocess.run([go, "install", VEGETA_MODULE], env=dict(os.environ, GOBIN=str(binary.parent)),
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not binary.is_file():
        raise RuntimeError(f"go install {VEGETA_MODULE} failed: {done.stderr.strip()[-300:]}")
    return binary


def attack(vegeta: Path, work: Path, url: str, body: bytes, headers: dict[str, str], rate: int, duration_s: float) -> dict[str, Any]:
    """One attack at `rate` requests/s for `duration_s`; vegeta's JSON report (latencies in ns)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "body.json").write_bytes(body)
    target = "\n".join([f"POST {url}", *(f"{k}: {v}" for k, v in headers.items()), f"@{work / 'body.json'}", ""])
    (work / "targets.txt").write_text(target)
    return attack_report(vegeta, work, ["-targets", str(work / "targets.txt"), "-rate", f"{rate}/1s"], duration_s)


def attack_report(vegeta: Path, work: Path, options: list[str], duration_s: float) -> dict[str, Any]:
    """`vegeta attack` with `options` (targets, rate, workers) for `duration_s`, its results kept in
    `work`; vegeta's JSON report of them (latencies in ns)."""
    results = work / "results.bin"
    subprocess.run([str(vegeta), "attack", *options, "-duration", f"{duration_s}s", "-timeout", "10s", "-output", str(results)],
                   check=True, capture_output=True, timeout=duration_s + 60)
    out = subprocess.run([str(vegeta), "report", "-type", "json", str(results)], check=True, capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)
