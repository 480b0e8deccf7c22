"""A task's outcome taken when nobody awaits it any more."""

from __future__ import annotations

import asyncio
from typing import Any


def retrieve_outcome(task: asyncio.Future[Any]) -> None:
    """A done callback for a task whose caller has stopped waiting for it (or learns of its failure
    some other way): its exception is taken, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()
