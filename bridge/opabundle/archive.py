"""OPA bundle archives (tar.gz) to and from an ordered `dict[path, bytes]`.

Path convention: every key is the path OPA reports for the file, with exactly one leading slash:
`/data.json`, `/.manifest`, `/policy.wasm`, `/x/y/policy.rego`. That is the form `opa build` writes
into its tarballs, and the signature name of a file is this key minus the slash (see hashing.py).

Why the reader is strict: OPA compares tar entry names *verbatim* (after trimming one `/`) with the
names in the signature, so `./a/../b.rego` or `a//b.rego` would be a different file to OPA than to
anyone who normalises paths. We accept `name`, `/name` and `./name` (what `tar -C dir .` makes) and
refuse anything else that is not already clean. OPA silently skips non-regular entries; we refuse
them (symlinks, hard links, devices, FIFOs, sparse or contiguous files) so that what we sign is
exactly what the agent will read. Directory entries carry no data and are skipped, as OPA does.

Why the writer is deterministic: bundle ETags are content hashes of the archive, so the same files
must give the same bytes. Entries are sorted by path and get fixed metadata (mode 0644, uid/gid 0,
mtime 0, no user names); gzip gets mtime 0 and a fixed level. (A different zlib build could still
compress differently; ETags are only compared against archives this process produced.)
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Mapping

from bridge.kernel.errors import GroqPolicyError

MAX_FILE_BYTES = 128 * 1024 * 1024  # per file; OPA's own default limit is 1 GiB
MAX_TOTAL_BYTES = 512 * 1024 * 1024  # all files together, after decompression (gzip bombs)
MAX_FILES = 10_000
FILE_MODE = 0o644
GZIP_LEVEL = 6  # 9 took twice as long (72 against 36 ms for the library's wasm archive, on every write's path) for 0.6% less

_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


class BundleArchiveError(GroqPolicyError):
    """A bundle archive cannot be read or written (not gzip/tar, unsafe path, too large, odd entry)."""

    status = 422


def bundle_path(name: str) -> str:
    """`name` in the canonical `/a/b` form, or BundleArchiveError when it is not a clean relative path."""
    if name.startswith("./"):
        rel = name[2:]
    elif name.startswith("/"):
        rel = name[1:]
    else:
        rel = name
    if any("\udc80" <= ch <= "\udcff" for ch in rel):  # tarfile's surrogateescape for non-UTF-8 bytes
        raise BundleArchiveError(f"{name!r}: path is not valid UTF-8")
    if not rel or "\x00" in rel or "\\" in rel:
        raise BundleArchiveError(f"{name!r}: invalid path (empty, or contains NUL or a backslash)")
    if any(seg in ("", ".", "..") for seg in rel.split("/")):
        raise BundleArchiveError(
            f"{name!r}: path must be clean and relative (no '..', '.' or empty segments): "
            f"OPA matches signed file names verbatim"
        )
    return "/" + rel


def read_bundle(
    data: bytes,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_files: int = MAX_FILES,
) -> dict[str, bytes]:
    """The regular files of a bundle tar.gz, in archive order, keyed by canonical path."""
    files: dict[str, bytes] = {}
    total = entries = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                entries += 1
                if entries > max_files:
                    raise BundleArchiveError(f"archive: too many entries (want at most {max_files})")
                if member.isdir():
                    continue
                if member.type not in _REGULAR:
                    kind = _TYPE_NAMES.get(member.type, f"tar type {member.type!r}")
                    raise BundleArchiveError(f"{member.name!r}: not a regular file ({kind})")
                path = bundle_path(member.name)
                if path in files:
                    raise BundleArchiveError(f"{path}: duplicate entry in archive")
                if member.size > max_file_bytes:
                    raise BundleArchiveError(
                        f"{path}: file too large (want at most {max_file_bytes} bytes, got: {member.size})"
                    )
                total += member.size
                if total > max_total_bytes:
                    raise BundleArchiveError(
                        f"archive: files too large in total (want at most {max_total_bytes} bytes)"
                    )
                fh = tar.extractfile(member)
                files[path] = fh.read() if fh is not None else b""
    except BundleArchiveError:
        raise
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
        raise BundleArchiveError(f"archive read failed: {exc}") from exc
    return files


def write_bundle(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar.gz of `files` (keys with or without the leading slash), sorted by path."""
    canonical: dict[str, bytes] = {}
    for name, content in files.items():
        path = bundle_path(name)
        if path in canonical:
            raise BundleArchiveError(f"{path}: given twice (as {name!r} and another spelling)")
        canonical[path] = bytes(content)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(canonical, key=lambda p: p.encode("utf-8")):
            content = canonical[path]
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime, info.type = len(content), FILE_MODE, 0, tarfile.REGTYPE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), compresslevel=GZIP_LEVEL, mtime=0)
