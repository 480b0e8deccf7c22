"""Files only their owner may read: everything groqpolicy writes that holds a token, a key, a
bundle (its data carries the bridge token) or decision inputs. 0600 on create, and an existing
file that an older version left wider is narrowed on open (the umask can only narrow, never
widen, a mode, but a file created before this rule keeps its old one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO


def open_private(path: Path, mode: str = "ab") -> IO[bytes]:
    """`open(path, mode)` for "ab" or "wb", the file 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def write_private(path: Path, text: str) -> None:
    """`text` into `path`, 0600."""
    with open_private(path, "wb") as fh:
        fh.write(text.encode())
