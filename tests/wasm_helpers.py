"""Helpers for the wasm evaluator tests: build wasm bundles with the real opa (cached), sign them,
and evaluate rules with the real `opa eval` (topdown) for differential checks."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from bridge.opabundle.archive import read_bundle, write_bundle
from bridge.opabundle.signing import sign_bundle
from controlplane.infra.toolchain import opa_binary

CACHE_DIR = Path(os.environ.get("GROQPOLICY_WASM_TEST_CACHE", Path(tempfile.gettempdir()) / "groqpolicy-wasm-cache"))


def build_wasm_bundle(sources: dict[str, str], entrypoints: list[str], data: Any = None, flags: tuple[str, ...] = ()) -> bytes:
    """`opa build -t wasm` over the given rego files (+ data.json), cached by content."""
    h = hashlib.sha256(msgspec.json.encode([sorted(sources.items()), entrypoints, data, list(flags)])).hexdigest()[:24]
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    out = CACHE_DIR / f"{h}.tar.gz"
    if out.exists():
        return out.read_bytes()
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / "src"
        src.mkdir()
        for name, text in sources.items():
            (src / name).write_text(text)
        if data is not None:
            (src / "data.json").write_bytes(msgspec.json.encode(data))
        args = [str(opa_binary()), "build", "-t", "wasm", *flags, "-o", str(Path(td) / "b.tar.gz")]
        for e in entrypoints:
            args += ["-e", e]
        args.append(str(src))
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"opa build failed: {proc.stdout}{proc.stderr}")
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes((Path(td) / "b.tar.gz").read_bytes())
        tmp.replace(out)
    return out.read_bytes()


def bundle_files(bundle: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        for m in tar:
            if m.isfile():
                fh = tar.extractfile(m)
                files["/" + m.name.lstrip("/")] = fh.read() if fh else b""
    return files


def signed_bundle(bundle: bytes, key: Any) -> bytes:
    return write_bundle(sign_bundle(read_bundle(bundle), key))


def opa_eval_many(sources: dict[str, str], data: Any, query_rule: str, inputs: list[Any]) -> list[dict[str, Any]]:
    """Evaluate `query_rule` (e.g. `data.t.r`) for each input with topdown, in one `opa eval` run.

    Each input is evaluated with `with input as`, in a generated rule that collects
    `{"i": index, "defined": bool, "value": ...}` per input; runtime errors of one input abort the
    whole run, so callers pass only inputs expected not to error (errors are checked per case).
    """
    with tempfile.TemporaryDirectory() as td:
        src = Path(td)
        for name, text in sources.items():
            (src / name).write_text(text)
        (src / "inputs.json").write_bytes(msgspec.json.encode({"__diff_inputs": inputs}))
        if data is not None:
            (src / "data.json").write_bytes(msgspec.json.encode(data))
        driver = (
            "package __diff\n"
            "results := [r |\n"
            "  some i, inp in data.__diff_inputs\n"
            f"  r := {{\"i\": i, \"out\": [v | v := {query_rule} with input as inp]}}\n"
            "]\n"
        )
        (src / "__diff.rego").write_text(driver)
        args = [str(opa_binary()), "eval", "--format", "json", "-d", str(src), "data.__diff.results"]
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"opa eval failed: {proc.stdout}{proc.stderr}")
        doc = msgspec.json.decode(proc.stdout)
        return doc["result"][0]["expressions"][0]["value"]


def opa_eval_one(sources: dict[str, str], data: Any, query_rule: str, input_: Any, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """One input with topdown: {"defined": bool, "value": ...} or {"error": message}."""
    with tempfile.TemporaryDirectory() as td:
        src = Path(td)
        for name, text in sources.items():
            (src / name).write_text(text)
        if data is not None:
            (src / "data.json").write_bytes(msgspec.json.encode(data))
        inp = src.parent / (src.name + "-input.json")
        inp.write_bytes(msgspec.json.encode(input_))
        args = [str(opa_binary()), "eval", *flags, "--format", "json", "-d", str(src), "-i", str(inp), query_rule]
        proc = subprocess.run(args, capture_output=True, text=True, check=False)
        inp.unlink()
        if proc.returncode != 0:
            try:
                msgs = [e.get("message", "") for e in msgspec.json.decode(proc.stdout).get("errors", [])]
            except (msgspec.DecodeError, AttributeError):
                msgs = []
            return {"error": (proc.stdout + proc.stderr).strip(), "messages": msgs}
        doc = msgspec.json.decode(proc.stdout)
        res = doc.get("result")
        if not res:
            return {"defined": False}
        return {"defined": True, "value": res[0]["expressions"][0]["value"]}
