"""Reading a JetStream stream in order by batched direct get (`$JS.API.DIRECT.GET.<stream>` with
`batch` and `next_by_subj`): one request returns up to a batch of messages and ends with a 204, so a
long read costs a round trip per batch, not per message, and needs no consumer (the roles that read
may not create one). The audit trail and the replay store both read this way; each maps the
refusals below onto its own error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client

READ_BATCH = 256  # messages one direct get returns


class DirectGetRefused(Exception):
    """The server answered a direct get with a status other than end-of-batch or nothing-more."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"{status} {description}".strip())
        self.status, self.description = status, description


async def scan(nc: Client, stream: str, subject: str, *, start_seq: int = 1, start_time: float | None = None,
               timeout: float) -> AsyncIterator[tuple[int, str, bytes]]:
    """Yield (seq, subject, data) of `stream`'s messages on `subject` in order, from `start_seq`
    (or from `start_time`, epoch seconds). A batch that does not answer within `timeout` raises
    nats' TimeoutError; a refusal raises DirectGetRefused."""
    seq = max(1, start_seq)
    first = True
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        while True:
            body: dict[str, Any] = {"batch": READ_BATCH, "next_by_subj": subject}
            if first and start_time is not None:
                body["start_time"] = datetime.fromtimestamp(start_time, UTC).isoformat().replace("+00:00", "Z")
            else:
                body["seq"] = seq
            first = False
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=inbox)
            got = 0
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                status = headers.get("Status", "")
                if status == "204":  # end of batch
                    break
                if status == "404":  # nothing (more) at or after seq
                    return
                if status:
                    raise DirectGetRefused(status, headers.get("Description", ""))
                got += 1
                s = int(headers["Nats-Sequence"])
                seq = s + 1
                yield s, headers.get("Nats-Subject", ""), msg.data
            if got == 0:
                return
    finally:
        await sub.unsubscribe()
