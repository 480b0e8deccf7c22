"""A source tree's artifacts after every `opa` stage (`Built`) and the bundle made from them
(`CompiledBundle`): the deployment's data overlay and the `.manifest` (roots, revision, metadata such
as the policies' certificates) are added here, after the build, so no `opa` runs for them."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bridge.opabundle.data import merge_data
from controlplane.bundles.definitions import BundleDefinition, digest_with, revision_for
from controlplane.bundles.findings import TestResult


class Built(msgspec.Struct):
    """A source tree through every `opa` stage, before the overlay and metadata (`Compiler.finish`)."""

    definition: BundleDefinition
    tree: Any  # the running sha256 over the tree's files, continued by `finish`
    rego_files: dict[str, bytes]
    wasm_files: dict[str, bytes]
    tests: list[TestResult]


class CompiledBundle(msgspec.Struct):
    """Unsigned artifacts of one definition, ready for signing."""

    name: str
    revision: str
    source_digest: str
    rego_files: dict[str, bytes]
    wasm_files: dict[str, bytes]
    entrypoints: list[str]
    tests: list[TestResult]

def finish(built: Built, overlay: dict | None = None, metadata: dict | None = None) -> CompiledBundle:
    """The bundle of a built tree with the deployment's `overlay` (data merged into `/data.json`) and
    the manifest's `metadata`; both count toward the revision. No `opa` runs here, so `metadata`
    known only after the build (a policy's certificate) costs nothing."""
    digest = digest_with(built.tree.copy(), overlay, metadata)
    definition, revision = built.definition, revision_for(built.definition.name, digest)
    rego_files, wasm_files = built.rego_files, built.wasm_files
    manifest = json.loads(wasm_files.get("/.manifest", b"{}"))
    entrypoints = [w["entrypoint"] for w in manifest.get("wasm", [])]
    if overlay:
        rego_files, wasm_files = _with_data(rego_files, overlay), _with_data(wasm_files, overlay)
    if definition.roots or metadata or digest != built.tree.hexdigest():  # else opa's manifest is the bundle's
        rego_files = _with_manifest(rego_files, roots=definition.roots, name=definition.name, metadata=metadata, revision=revision)
        wasm_files = _with_manifest(wasm_files, roots=definition.roots, name=definition.name, metadata=metadata, revision=revision)
    return CompiledBundle(name=definition.name, revision=revision, source_digest=digest, rego_files=rego_files,
                          wasm_files=wasm_files, entrypoints=entrypoints, tests=built.tests)


def with_overlay(files: dict[str, bytes], overlay: dict | None) -> dict[str, bytes]:
    """A target's files with the deployment's `overlay` merged into `/data.json`, as `finish` makes
    them (the manifest aside): what the evaluator's load check loads before the revision exists."""
    return _with_data(files, overlay) if overlay else files


def _with_data(files: dict[str, bytes], overlay: dict) -> dict[str, bytes]:
    data = json.loads(files.get("/data.json", b"{}"))
    return {**files, "/data.json": json.dumps(merge_data(data, overlay, overwrite=True), separators=(",", ":"), sort_keys=True).encode()}


def _with_manifest(files: dict[str, bytes], *, roots: list[str], name: str, metadata: dict | None = None,
                   revision: str = "") -> dict[str, bytes]:
    manifest = json.loads(files.get("/.manifest", b"{}"))
    if revision:
        manifest["revision"] = revision
    if roots:
        manifest["roots"] = roots
    if roots or metadata:
        manifest.setdefault("metadata", {}).update({**(metadata or {}), "bundle": name})
    return {**files, "/.manifest": json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()}
