"""Bundle tar.gz reading (strict, OPA's view of paths) and writing (deterministic)."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from bridge.opabundle.archive import BundleArchiveError, bundle_path, read_bundle, write_bundle


def make_tar(*entries: tuple[str, bytes | None, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar.gz from (name, tar type, content) entries, built by hand so any oddity is possible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, content in entries:
            info = tarfile.TarInfo(name)
            info.type = kind if kind is not None else tarfile.REGTYPE
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.linkname = content.decode()
                tar.addfile(info)
    return gzip.compress(buf.getvalue())


def reg(name: str, content: bytes = b"x") -> tuple[str, bytes, bytes]:
    return (name, tarfile.REGTYPE, content)


def test_read_keeps_archive_order_and_puts_one_leading_slash_on_every_path() -> None:
    data = make_tar(
        reg("/data.json", b"{}"),
        ("x/", tarfile.DIRTYPE, b""),
        reg("x/y/policy.rego", b"package x.y\n"),
        reg("./.manifest", b'{"roots":[""]}'),
        ("z", tarfile.AREGTYPE, b"old-style regular file"),
    )
    files = read_bundle(data)
    assert list(files) == ["/data.json", "/x/y/policy.rego", "/.manifest", "/z"]
    assert files["/x/y/policy.rego"] == b"package x.y\n"


def test_write_is_deterministic_sorted_and_readable_by_opa(opa_bin: Path, tmp_path: Path) -> None:
    files = {"/b/policy.rego": b"package b\n\nallow := true\n", "data.json": b'{"b":{"k":1}}', "/.manifest": b'{"roots":["b"]}'}
    first = write_bundle(files)
    assert write_bundle(dict(reversed(files.items()))) == first  # insertion order does not matter
    assert write_bundle(read_bundle(first)) == first
    assert list(read_bundle(first)) == ["/.manifest", "/b/policy.rego", "/data.json"]
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert (member.mode, member.mtime, member.uid, member.gid, member.uname) == (0o644, 0, 0, 0, "")
            assert member.name.startswith("/")
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(first)
    proc = subprocess.run([str(opa_bin), "eval", "-b", str(bundle), "--format", "raw", "data.b"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '{"allow":true,"k":1}'


def test_large_and_non_ascii_names_round_trip() -> None:
    long_name = "/" + "/".join(["d" * 60] * 5) + "/policy.rego"
    files = {long_name: b"package p\n", "/é/日本.rego": b"package q\n"}
    assert read_bundle(write_bundle(files)) == dict(sorted(files.items(), key=lambda kv: kv[0].encode()))


READ_ERRORS = {
    "parent traversal": (make_tar(reg("../evil.rego")), r"^'\.\./evil\.rego': path must be clean and relative"),
    "absolute traversal": (make_tar(reg("/a/../../evil")), r"^'/a/\.\./\.\./evil': path must be clean and relative"),
    "dot segment": (make_tar(reg("a/./b.rego")), r"^'a/\./b\.rego': path must be clean and relative"),
    "double slash": (make_tar(reg("//etc/passwd")), r"^'//etc/passwd': path must be clean and relative"),
    "empty segment": (make_tar(reg("a//b.rego")), r"^'a//b\.rego': path must be clean and relative"),
    "backslash": (make_tar(reg("a\\..\\b")), r"^'a\\\\\.\.\\\\b': invalid path"),
    "symlink": (make_tar(("link.rego", tarfile.SYMTYPE, b"/etc/passwd")), r"^'link\.rego': not a regular file \(symbolic link\)$"),
    "hard link": (make_tar(reg("a"), ("b", tarfile.LNKTYPE, b"a")), r"^'b': not a regular file \(hard link\)$"),
    "fifo": (make_tar(("fifo", tarfile.FIFOTYPE, b"")), r"^'fifo': not a regular file \(FIFO\)$"),
    "char device": (make_tar(("dev", tarfile.CHRTYPE, b"")), r"^'dev': not a regular file \(character device\)$"),
    "duplicate": (make_tar(reg("/data.json"), reg("data.json")), r"^/data\.json: duplicate entry in archive$"),
    "not gzip": (b"PK\x03\x04 a zip file", r"^archive read failed: "),
    "truncated": (make_tar(reg("/p.rego", b"x" * 5000))[:40], r"^archive read failed: "),
}


@pytest.mark.parametrize(("data", "message"), READ_ERRORS.values(), ids=READ_ERRORS.keys())
def test_read_rejects(data: bytes, message: str) -> None:
    with pytest.raises(BundleArchiveError, match=message):
        read_bundle(data)


def test_read_limits() -> None:
    data = make_tar(reg("/a.rego", b"a" * 100), reg("/b.rego", b"b" * 100), reg("/c.rego", b"c"))
    with pytest.raises(BundleArchiveError, match=r"^/a\.rego: file too large \(want at most 99 bytes, got: 100\)$"):
        read_bundle(data, max_file_bytes=99)
    with pytest.raises(BundleArchiveError, match=r"^archive: files too large in total \(want at most 150 bytes\)$"):
        read_bundle(data, max_total_bytes=150)
    with pytest.raises(BundleArchiveError, match=r"^archive: too many entries \(want at most 2\)$"):
        read_bundle(data, max_files=2)
    assert len(read_bundle(data, max_file_bytes=100, max_total_bytes=201, max_files=3)) == 3


def test_gzip_bomb_is_stopped_by_the_declared_sizes() -> None:
    bomb = make_tar(reg("/data.json", b"0" * (8 * 1024 * 1024)))
    assert len(bomb) < 64 * 1024
    with pytest.raises(BundleArchiveError, match=r"file too large"):
        read_bundle(bomb, max_file_bytes=1024 * 1024)


@pytest.mark.parametrize(
    ("name", "want"),
    [("data.json", "/data.json"), ("/data.json", "/data.json"), ("./a/b.rego", "/a/b.rego"), ("/.manifest", "/.manifest")],
)
def test_bundle_path(name: str, want: str) -> None:
    assert bundle_path(name) == want


def test_write_rejects_the_same_file_spelled_twice_and_bad_paths() -> None:
    with pytest.raises(BundleArchiveError, match=r"^/data\.json: given twice"):
        write_bundle({"data.json": b"{}", "/data.json": b"{}"})
    with pytest.raises(BundleArchiveError, match=r"path must be clean and relative"):
        write_bundle({"/../x": b""})
