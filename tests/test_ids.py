"""Buffered random UUIDs: RFC 4122 version 4 ids, never repeated, also across a fork."""

from __future__ import annotations

import os
import uuid

from controlplane.infra.ids import uuid4_text, uuid4s


def test_ids_are_version_4_rfc_4122_and_distinct():
    ids = uuid4s(1000) + [uuid.UUID(uuid4_text()) for _ in range(1000)]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in ids)
    assert len(set(ids)) == 2000
    assert all(str(u) == str(uuid.UUID(str(u))) for u in ids[:10])  # canonical text form


def test_a_forked_child_does_not_hand_out_its_parents_ids():
    uuid4s(1)  # the parent's buffer holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, uuid4_text().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    assert child != uuid4_text()
