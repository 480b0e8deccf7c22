"""Signed wasm bundles -> `WasmPolicy`.

Loading order (each step refuses with a `BundleLoadError` naming the file and what was wrong):
archive -> signature verification (the foundation's `verify_bundle`, refused on any failure,
including an unsigned bundle) -> `.manifest` -> `policy.wasm` + the data files, merged as OPA
merges them -> compile, ABI check, builtins check, entrypoints, data load in a first instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from bridge.opabundle.archive import BundleArchiveError, read_bundle
from bridge.opabundle.data import BundleDataError, bundle_data
from bridge.opabundle.keys import VerificationKey
from bridge.opabundle.verify import BundleVerificationError, verify_bundle
from bridge.opawasm.errors import BundleLoadError, BundleVerificationFailed
from bridge.opawasm.options import LoadOptions, load_options
from bridge.opawasm.policy import WasmPolicy


def load_bundle(
    data: bytes, keys: Mapping[str, VerificationKey], options: LoadOptions | None = None, **overrides: Any
) -> WasmPolicy:
    """Verify and load a signed wasm bundle (tar.gz). Unsigned, tampered or wrong-key bundles are refused."""
    opts = load_options(options, overrides)
    return policy_from_files(verified_files(data, keys, opts), opts)


def verified_files(data: bytes, keys: Mapping[str, VerificationKey], opts: LoadOptions) -> dict[str, bytes]:
    """The files of a signed wasm bundle (tar.gz) once its signature verifies; else BundleLoadError
    or BundleVerificationFailed."""
    if not keys:
        raise BundleVerificationFailed("bundle verification failed: no verification keys configured")
    try:
        files = read_bundle(data)
    except BundleArchiveError as exc:
        raise BundleLoadError(f"bundle archive: {exc}") from exc
    try:
        verify_bundle(files, keys, keyid=opts.keyid, scope=opts.scope)
    except BundleVerificationError as exc:
        raise BundleVerificationFailed(f"bundle verification failed: {exc}") from exc
    return files


def _module_of(files: Mapping[str, bytes]) -> tuple[dict[str, bytes], dict[str, Any], list[dict[str, Any]], str]:
    """(the files keyed from `/`, the manifest, its `wasm` entries, the path of the one module)."""
    files = {("/" + k.lstrip("/")): v for k, v in files.items()}
    manifest = _manifest(files)
    wasm_entries = [w for w in manifest.get("wasm") or [] if isinstance(w, dict)]
    return files, manifest, wasm_entries, _module_path(files, wasm_entries)


def policy_wasm(files: Mapping[str, bytes]) -> bytes:
    """The bytes of the one wasm module among a bundle's files (as `policy_from_files` picks it)."""
    files, _, _, module = _module_of(files)
    return files[module]


def policy_from_files(files: Mapping[str, bytes], options: LoadOptions | None = None, **overrides: Any) -> WasmPolicy:
    """A policy from already-verified bundle files (keys like `/policy.wasm`)."""
    opts = load_options(options, overrides)
    files, manifest, wasm_entries, module = _module_of(files)
    entrypoints = [str(w["entrypoint"]) for w in wasm_entries if "entrypoint" in w]
    try:
        data = bundle_data(files)
    except BundleDataError as exc:
        raise BundleLoadError(str(exc)) from exc
    return WasmPolicy(
        files[module], data, opts, revision=str(manifest.get("revision", "")), manifest_entrypoints=entrypoints or None
    )


def _manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    if "/.manifest" not in files:
        return {}
    try:
        manifest = msgspec.json.decode(files["/.manifest"])
    except msgspec.DecodeError as exc:
        raise BundleLoadError(f"/.manifest: invalid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleLoadError("/.manifest: must be a JSON object")
    return manifest


def _module_path(files: Mapping[str, bytes], wasm_entries: list[dict[str, Any]]) -> str:
    """The one wasm module: the one the manifest names, else the one .wasm file."""
    modules = sorted({"/" + str(w.get("module", "")).lstrip("/") for w in wasm_entries})
    if not modules:
        modules = [p for p in files if p.endswith(".wasm")]
    if not modules:
        raise BundleLoadError("bundle: no wasm module (build it with `opa build -t wasm`)")
    if len(modules) > 1:
        raise BundleLoadError(f"bundle: more than one wasm module is not supported: {', '.join(modules)}")
    if modules[0] not in files:
        raise BundleLoadError(f"{modules[0]}: named in /.manifest but missing from the bundle")
    return modules[0]
