"""A bundle's data files merged into one base document, with OPA's rules (v1/bundle insertData):
documents land at their directory's path, objects merge, anything else set twice is refused."""

from __future__ import annotations

import pytest

from bridge.opabundle.data import BundleDataError, DataConflictError, bundle_data, merge_data


def test_documents_land_at_their_directory_and_merge():
    files = {
        "/data.json": b'{"top": true, "a": {"keep": 1}}',
        "/a/b/data.json": b'{"x": 42}',
        "/a/c/data.yaml": b"list: [1, 2]\n",
        "/a/d/data.json": b'"a string at data.a.d"',
        "/policy.rego": b"package p",
        "/x/notdata.json": b'{"ignored": true}',
    }
    assert bundle_data(files) == {
        "top": True,
        "a": {"keep": 1, "b": {"x": 42}, "c": {"list": [1, 2]}, "d": "a string at data.a.d"},
    }


def test_the_same_value_set_twice_is_refused():
    files = {"/a/b/data.json": b'{"x": 42}', "/a/data.json": b'{"b": {"x": 1}}'}
    with pytest.raises(BundleDataError, match=r"/a/b/data.json: data at /a/b/x conflicts with data from another file"):
        bundle_data(files)
    # objects at the same path merge: no conflict
    files["/a/data.json"] = b'{"b": {"y": 1}}'
    assert bundle_data(files) == {"a": {"b": {"x": 42, "y": 1}}}
    # a scalar document where another file put an object is a conflict too, as in OPA
    with pytest.raises(BundleDataError, match="conflicts"):
        bundle_data({"/a/data.json": b'{"b": {}}', "/a/b/data.json": b"3"})


def test_the_root_document_must_be_an_object_and_readable():
    with pytest.raises(BundleDataError, match=r"/data\.json: the root data document must be an object"):
        bundle_data({"/data.json": b"[1]"})
    with pytest.raises(BundleDataError, match=r"/a/data\.json: invalid data document"):
        bundle_data({"/a/data.json": b"{nope"})


def test_merge_data_copies_and_overwrite_lets_the_overlay_win():
    base = {"a": {"x": 1, "y": {"z": 1}}, "b": 1}
    overlay = {"a": {"y": {"w": 2}}, "c": 3}
    merged = merge_data(base, overlay)
    assert merged == {"a": {"x": 1, "y": {"z": 1, "w": 2}}, "b": 1, "c": 3}
    assert base == {"a": {"x": 1, "y": {"z": 1}}, "b": 1}  # neither input is changed
    with pytest.raises(DataConflictError) as exc:
        merge_data(base, {"a": {"x": 2}})
    assert exc.value.keys == ("a", "x")
    assert merge_data(base, {"a": {"x": 2, "y": 0}}, overwrite=True) == {"a": {"x": 2, "y": 0}, "b": 1}
