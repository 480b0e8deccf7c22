"""A bundle's data: its data files merged into one base document, as OPA's bundle reader does.

Every `data.json` / `data.yaml` / `data.yml` lands at its directory's path (`/a/b/data.json` at
`data.a.b`); the root file must hold an object. Documents merge object by object; where two files
set the same key and the values are not both objects, OPA refuses the bundle (v1/bundle's
insertData over internal/merge's InterfaceMaps), and so does `bundle_data`. `merge_data` is that
merge, with an `overwrite` mode for callers that lay their own data over a bundle's.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import msgspec
import yaml

from bridge.kernel.errors import GroqPolicyError

DATA_BASENAMES = frozenset({"data.json", "data.yaml", "data.yml"})


class BundleDataError(GroqPolicyError):
    """A data file cannot be read, or its document cannot be merged with the others."""

    status = 422


class DataConflictError(BundleDataError):
    """Two documents set the same key to values that are not both objects."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        super().__init__(f"data.{'.'.join(keys)}: set by two documents (and not both objects)")


def merge_data(base: Mapping[str, Any], overlay: Mapping[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """`overlay` merged into a copy of `base`; neither is changed. Objects merge key by key; a key
    both set to values that are not both objects is a DataConflictError, or with `overwrite`, the
    overlay's value wins."""
    return _merge(base, overlay, overwrite, ())


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any], overwrite: bool, at: tuple[str, ...]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if key not in out:
            out[key] = value
            continue
        current = out[key]
        if isinstance(current, dict) and isinstance(value, dict):
            out[key] = _merge(current, value, overwrite, (*at, key))
        elif overwrite:
            out[key] = value
        else:
            raise DataConflictError((*at, key))
    return out


def is_data_file(path: str) -> bool:
    return posixpath.basename(path) in DATA_BASENAMES


def bundle_data(files: Mapping[str, bytes]) -> dict[str, Any]:
    """The base document of a bundle's files (keys like `/a/b/data.json`)."""
    data: dict[str, Any] = {}
    for path in sorted(files, key=lambda p: p.count("/")):  # the root document first
        if not is_data_file(path):
            continue
        doc = _decode(path, files[path])
        keys = [s for s in path.strip("/").split("/")[:-1] if s]
        if not keys and not isinstance(doc, dict):
            raise BundleDataError(f"{path}: the root data document must be an object")
        for key in reversed(keys):
            doc = {key: doc}
        try:
            data = merge_data(data, doc)
        except DataConflictError as exc:
            where = "/".join(exc.keys)
            raise BundleDataError(f"{path}: data at /{where} conflicts with data from another file") from exc
    return data


def _decode(path: str, raw: bytes) -> Any:
    try:
        if path.endswith(".json"):
            return msgspec.json.decode(raw)
        return yaml.safe_load(raw)
    except (msgspec.DecodeError, ValueError, yaml.YAMLError) as exc:
        raise BundleDataError(f"{path}: invalid data document: {exc}") from exc
