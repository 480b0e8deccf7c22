"""Signed wasm bundles -> `WasmPolicy`, and the hot-swappable `WasmEvaluator` the control plane holds.

Loading order (each step refuses with a `BundleLoadError` naming the file and what was wrong):
archive -> signature verification (the foundation's `verify_bundle`, refused on any failure,
including an unsigned bundle) -> `.manifest` -> `policy.wasm` + `data.json` files -> compile,
ABI check, builtins check, entrypoints, data load in a first instance. Only a fully loaded
revision is ever published, by one reference assignment (atomic under the GIL): evaluations that
started on the old revision finish on it; the old pool is closed so its instances are dropped
as they come back.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from bridge.opawasm import errors as E
from bridge.opawasm.host import HostConfig
from bridge.opawasm.policy import DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT, WasmPolicy


def _read_files(data: bytes) -> dict[str, bytes]:
    from bridge.opabundle.archive import BundleArchiveError, read_bundle

    try:
        return read_bundle(data)
    except BundleArchiveError as exc:
        raise E.BundleLoadError(f"bundle archive: {exc}") from None


def _verify(files: Mapping[str, bytes], keys: Mapping[str, Any], keyid: str | None, scope: str | None) -> None:
    from bridge.opabundle.verify import BundleVerificationError, verify_bundle

    try:
        verify_bundle(files, keys, keyid=keyid, scope=scope)
    except BundleVerificationError as exc:
        raise E.BundleVerificationFailed(f"bundle verification failed: {exc}") from None


def _merge_data(files: Mapping[str, bytes]) -> dict[str, Any]:
    """The base document: every data.json / data.yaml at its directory's path, like OPA's loader."""
    import yaml

    data: dict[str, Any] = {}
    for path in sorted(files, key=lambda p: p.count("/")):
        name = path.rsplit("/", 1)[-1]
        if name not in ("data.json", "data.yaml", "data.yml"):
            continue
        try:
            if name == "data.json":
                doc = msgspec.json.decode(files[path])
            else:
                doc = yaml.safe_load(files[path])
        except (msgspec.DecodeError, ValueError, yaml.YAMLError) as exc:
            raise E.BundleLoadError(f"{path}: invalid data document: {exc}") from None
        segs = [s for s in path.strip("/").split("/")[:-1] if s]
        node = data
        for s in segs:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise E.BundleLoadError(f"{path}: data path conflicts with a non-object value")
        if segs and not isinstance(doc, dict):
            if node:
                raise E.BundleLoadError(f"{path}: a non-object document where other files put an object")
            node_parent = data
            for s in segs[:-1]:
                node_parent = node_parent[s]
            node_parent[segs[-1]] = doc
            continue
        if not isinstance(doc, dict):
            raise E.BundleLoadError(f"{path}: the root data document must be an object")
        _deep_merge(node, doc, path)
    return data


def _deep_merge(dst: dict[str, Any], src: dict[str, Any], path: str) -> None:
    for k, v in src.items():
        if k in dst and isinstance(dst[k], dict) and isinstance(v, dict):
            _deep_merge(dst[k], v, path)
        elif k in dst:
            raise E.BundleLoadError(f"{path}: key {k!r} conflicts with data from another file")
        else:
            dst[k] = v


def policy_from_files(
    files: Mapping[str, bytes],
    *,
    host: HostConfig | None = None,
    pool_size: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    timeout: float = DEFAULT_TIMEOUT,
    strict_builtin_errors: bool = False,
) -> WasmPolicy:
    """A policy from already-verified bundle files (keys like `/policy.wasm`)."""
    files = {("/" + k.lstrip("/")): v for k, v in files.items()}
    manifest: dict[str, Any] = {}
    if "/.manifest" in files:
        try:
            manifest = msgspec.json.decode(files["/.manifest"])
        except msgspec.DecodeError as exc:
            raise E.BundleLoadError(f"/.manifest: invalid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise E.BundleLoadError("/.manifest: must be a JSON object")
    wasm_entries = manifest.get("wasm") or []
    modules = sorted({"/" + str(w.get("module", "")).lstrip("/") for w in wasm_entries if isinstance(w, dict)})
    if not modules:
        modules = [p for p in files if p.endswith(".wasm")]
    if not modules:
        raise E.BundleLoadError("bundle: no wasm module (build it with `opa build -t wasm`)")
    if len(modules) > 1:
        raise E.BundleLoadError(f"bundle: more than one wasm module is not supported: {', '.join(modules)}")
    module = modules[0]
    if module not in files:
        raise E.BundleLoadError(f"{module}: named in /.manifest but missing from the bundle")
    entrypoints = [str(w["entrypoint"]) for w in wasm_entries if isinstance(w, dict) and "entrypoint" in w]
    data = _merge_data(files)
    return WasmPolicy(
        files[module],
        data,
        host=host,
        pool_size=pool_size,
        memory_limit=memory_limit,
        timeout=timeout,
        revision=str(manifest.get("revision", "")),
        manifest_entrypoints=entrypoints or None,
        strict_builtin_errors=strict_builtin_errors,
    )


def load_bundle(
    data: bytes,
    keys: Mapping[str, Any],
    *,
    keyid: str | None = None,
    scope: str | None = None,
    host: HostConfig | None = None,
    pool_size: int | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    timeout: float = DEFAULT_TIMEOUT,
    strict_builtin_errors: bool = False,
) -> WasmPolicy:
    """Verify and load a signed wasm bundle (tar.gz). Unsigned, tampered or wrong-key bundles are refused."""
    if not keys:
        raise E.BundleVerificationFailed("bundle verification failed: no verification keys configured")
    files = _read_files(data)
    _verify(files, keys, keyid, scope)
    return policy_from_files(files, host=host, pool_size=pool_size, memory_limit=memory_limit, timeout=timeout,
                             strict_builtin_errors=strict_builtin_errors)


class WasmEvaluator:
    """The current policy revision, swappable atomically. Thread-safe and asyncio-friendly."""

    def __init__(
        self,
        keys: Mapping[str, Any],
        *,
        keyid: str | None = None,
        scope: str | None = None,
        host: HostConfig | None = None,
        pool_size: int | None = None,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        timeout: float = DEFAULT_TIMEOUT,
        strict_builtin_errors: bool = False,
    ) -> None:
        self.keys = dict(keys)
        self.strict_builtin_errors = strict_builtin_errors
        self.keyid, self.scope = keyid, scope
        self.host = host or HostConfig()
        self.pool_size, self.memory_limit, self.timeout = pool_size, memory_limit, timeout
        self._policy: WasmPolicy | None = None
        self._swap_lock = threading.Lock()
        self._pins: dict[WasmPolicy, int] = {}  # revisions in use by `pinned` blocks: how many each
        self._retired: set[WasmPolicy] = set()  # replaced while pinned: closed when the last pin ends

    @property
    def policy(self) -> WasmPolicy:
        p = self._policy
        if p is None:
            raise E.PoolClosed("no policy bundle loaded")
        return p

    @property
    def revision(self) -> str | None:
        p = self._policy
        return None if p is None else p.revision

    def load(self, bundle: bytes) -> WasmPolicy:
        """Verify, load and publish a new revision; on any error the current revision stays."""
        new = load_bundle(
            bundle, self.keys, keyid=self.keyid, scope=self.scope, host=self.host,
            pool_size=self.pool_size, memory_limit=self.memory_limit, timeout=self.timeout,
            strict_builtin_errors=self.strict_builtin_errors,
        )
        with self._swap_lock:
            old, self._policy = self._policy, new
            old = self._retire(old)
        if old is not None:
            old.close()
        return new

    def _retire(self, old: WasmPolicy | None) -> WasmPolicy | None:
        """(Under the swap lock.) `old` if it can be closed now; None if a pin keeps it open."""
        if old is not None and old in self._pins:
            self._retired.add(old)
            return None
        return old

    @contextlib.contextmanager
    def pinned(self) -> Iterator[WasmPolicy | WasmEvaluator]:
        """The current revision, kept open until the block ends even when a newer one is loaded
        meanwhile: every evaluation of one request sees the same revision. With no revision loaded
        it yields the evaluator itself, whose evaluations then fail with PoolClosed."""
        with self._swap_lock:
            p = self._policy
            if p is not None:
                self._pins[p] = self._pins.get(p, 0) + 1
        if p is None:
            yield self
            return
        try:
            yield p
        finally:
            with self._swap_lock:
                left = self._pins[p] - 1
                if left:
                    self._pins[p] = left
                    p = None
                else:
                    del self._pins[p]
                    if p in self._retired:
                        self._retired.discard(p)
                    else:
                        p = None
            if p is not None:
                p.close()

    def evaluate(self, entrypoint: str | int, input: Any = None, *, timeout: float | None = None) -> Any:
        p = self.policy
        try:
            return p.evaluate(entrypoint, input, timeout=timeout)
        except E.PoolClosed:
            # swapped between reading the reference and acquiring an instance: use the new revision
            if self._policy is p or self._policy is None:
                raise
            return self.policy.evaluate(entrypoint, input, timeout=timeout)

    def evaluate_raw(self, entrypoint: str | int, input_json: bytes | None, *, timeout: float | None = None) -> bytes:
        p = self.policy
        try:
            return p.evaluate_raw(entrypoint, input_json, timeout=timeout)
        except E.PoolClosed:
            if self._policy is p or self._policy is None:
                raise
            return self.policy.evaluate_raw(entrypoint, input_json, timeout=timeout)

    async def evaluate_async(self, entrypoint: str | int, input: Any = None, *, timeout: float | None = None) -> Any:
        p = self.policy
        try:
            return await p.evaluate_async(entrypoint, input, timeout=timeout)
        except E.PoolClosed:
            if self._policy is p or self._policy is None:
                raise
            return await self.policy.evaluate_async(entrypoint, input, timeout=timeout)

    def close(self) -> None:
        with self._swap_lock:
            old, self._policy = self._policy, None
            old = self._retire(old)
        if old is not None:
            old.close()
