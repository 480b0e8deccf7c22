"""A/B timing of host builtins between two checkouts of the evaluator (interleaved runs).

    .venv/bin/python benchmarks/wasm/builtins_ab.py --a /path/to/old/checkout --b . [--rounds 7]

Each run is a fresh process with the checkout first on sys.path; runs alternate A, B, A, B...
so that the machine's load (shared, noisy) falls on both alike. One run evaluates every policy
below `EVALS` times and reports the median per builtin; the summary is the median of the runs'
medians and B's change against A. The policies call one host builtin each, with an input a policy
would use; the wasm is built once by the pinned opa and shared by both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODULE = """package ab
import rego.v1

b_regex_replace := regex.replace(input.s, "[0-9]+", "#")
b_regex_split := regex.split(",\\\\s*", input.csv)
b_regex_find_n := regex.find_n("[a-z]+", input.s, -1)
b_template_match := regex.template_match("urn:foo:{.*}", "urn:foo:bar:baz", "{", "}")
b_sprintf := sprintf("%s:%d:%v", [input.user, 42, input.f])
b_uri_parse := uri.parse(input.url)
b_uuid_parse := uuid.parse(input.uuid)
b_json_patch := json.patch(input.doc, [{"op": "add", "path": "/b", "value": 2}])
b_units_parse := units.parse(input.units)
b_units_parse_bytes := units.parse_bytes(input.bytes)
b_range_step := count(numbers.range_step(1, 100, 3))
b_render_template := strings.render_template("{{.user}} has {{range $.items}}[{{.}}]{{end}}", input)
b_yaml_unmarshal := yaml.unmarshal(input.yaml)
b_any_prefix := strings.any_prefix_match(input.url, ["https://", "http://"])
b_jwt_decode := io.jwt.decode(input.jwt)
b_jwt_decode_verify := io.jwt.decode_verify(input.jwt_rs, {"cert": input.cert, "time": 1700000000000000000})
b_x509_parse := count(crypto.x509.parse_certificates(input.cert))
b_glob_match := glob.match("*.example.com", ["."], input.host)
"""
INPUT = {
    "s": "order 1234 of 56 items abc", "csv": "a, b, c, d", "user": "alice", "f": 1.5,
    "url": "https://user@example.com:8443/a/b%20c?x=1#f", "uuid": "000003e8-48b9-21ee-b200-325096b39f47",
    "doc": {"a": 1}, "units": "1.5Ki", "bytes": "10MB", "items": ["x", "y", "z"],
    "yaml": "a: 1\nb: [x, y]\nc: {d: true}\n",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4ifQ.c2ln",
    "host": "api.example.com",
}
ENTRYPOINTS = [line.split(" :=")[0] for line in MODULE.splitlines() if " := " in line]
EVALS = 2000

_RUN = """
import json, statistics, sys, time
if sys.argv[6] == "fuel-off":
    # diagnostic arm: the engine compiles without fuel counting (what it costs the wasm side)
    import wasmtime
    wasmtime.Config.consume_fuel = property(fset=lambda self, value: None)
# the checkout under measurement, not the one the venv's editable install points at
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, sys.argv[5])
from bridge.opawasm import policy_from_files
assert __import__("bridge").__file__.startswith(sys.argv[5]), __import__("bridge").__file__
wasm = open(sys.argv[1], "rb").read()
inputs = json.loads(sys.argv[2])
pol = policy_from_files({"/policy.wasm": wasm}, pool_size=1, timeout=5.0)
out = {}
for ep in json.loads(sys.argv[3]):
    name = "ab/" + ep
    inp = inputs.get(ep, inputs[""])
    pol.evaluate(name, inp)
    ts = []
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter()
        pol.evaluate(name, inp)
        ts.append(time.perf_counter() - t)
    out[ep] = statistics.median(ts) * 1e6
print(json.dumps(out))
"""


def signed_inputs() -> dict[str, dict[str, object]]:
    """Inputs of the entrypoints that need a self-signed RSA certificate and an RS256 token it
    verifies, made fresh per invocation: both sides of one A/B get the same bytes, and no key
    material lives in the repository. Only these entrypoints get them: the others keep the small
    input, whose parsing (in wasm, on every evaluation) would otherwise grow by kilobytes."""
    import datetime

    import jwt
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ab.example.com")])
    now = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("ab.example.com")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    token = jwt.encode({"sub": "ann", "exp": 1900000000}, key, algorithm="RS256")
    return {"b_jwt_decode_verify": {"jwt_rs": token, "cert": pem}, "b_x509_parse": {"cert": pem}}


def build_wasm(opa: str) -> bytes:
    with tempfile.TemporaryDirectory() as td:
        (Path(td) / "p.rego").write_text(MODULE)
        args = [opa, "build", "-t", "wasm", "-o", f"{td}/b.tar.gz"]
        for ep in ENTRYPOINTS:
            args += ["-e", f"ab/{ep}"]
        subprocess.run([*args, f"{td}/p.rego"], check=True, capture_output=True)
        import tarfile

        with tarfile.open(f"{td}/b.tar.gz") as tar:
            for m in tar:
                fh = tar.extractfile(m) if m.name.lstrip("/") == "policy.wasm" else None
                if fh is not None:
                    return fh.read()
    raise RuntimeError("opa build produced no policy.wasm")


def run(checkout: Path, wasm_path: Path, evals: int, inputs: dict[str, Any], mode: str = "") -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _RUN, str(wasm_path), json.dumps(inputs), json.dumps(ENTRYPOINTS),
                          str(evals), str(checkout), mode or "-"], capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="the baseline checkout")
    ap.add_argument("--b", type=Path, required=True, help="the checkout under test")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--evals", type=int, default=EVALS)
    ap.add_argument("--opa", default=os.environ.get("OPA_BIN", "opa"))
    ap.add_argument("--fuel-off-arm", action="store_true",
                    help="also run B with wasmtime's fuel counting off (a third interleaved arm, column C): "
                         "how much of B's change is the fuel the inline budget counts")
    args = ap.parse_args()
    inputs: dict[str, Any] = {"": INPUT, **signed_inputs()}
    with tempfile.TemporaryDirectory() as td:
        wasm_path = Path(td) / "policy.wasm"
        wasm_path.write_bytes(build_wasm(args.opa))
        runs: dict[str, list[dict[str, float]]] = {"a": [], "b": [], "c": []}
        for _ in range(args.rounds):
            runs["a"].append(run(args.a.resolve(), wasm_path, args.evals, inputs))
            runs["b"].append(run(args.b.resolve(), wasm_path, args.evals, inputs))
            if args.fuel_off_arm:
                runs["c"].append(run(args.b.resolve(), wasm_path, args.evals, inputs, "fuel-off"))
    extra = f" {'C: B fuel off':>14} {'C vs A':>8}" if args.fuel_off_arm else ""
    print(f"{'builtin':<20} {'A median us':>12} {'B median us':>12} {'B vs A':>8}{extra}")
    for ep in ENTRYPOINTS:
        a = statistics.median(r[ep] for r in runs["a"])
        b = statistics.median(r[ep] for r in runs["b"])
        line = f"{ep:<20} {a:>12.1f} {b:>12.1f} {100 * (b - a) / a:>+7.1f}%"
        if args.fuel_off_arm:
            c = statistics.median(r[ep] for r in runs["c"])
            line += f" {c:>14.1f} {100 * (c - a) / a:>+7.1f}%"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
