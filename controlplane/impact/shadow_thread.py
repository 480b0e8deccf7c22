"""The shadow thread (its own event loop, taking what the live path queued every `TICK_S`), and
the serving loop's model client for callers on other loops (the shadows' and the replay's threads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from controlplane.evaluation.interfaces import AskModel

log = logging.getLogger(__name__)
TICK_S = 0.02


class Comparing(Protocol):
    queue: Any

    async def compare(self, items: list[Any]) -> None: ...


class ShadowThread:
    """The shadow thread: its own event loop, taking what `observe` queued every `TICK_S`."""

    def __init__(self, mode: Comparing) -> None:
        self.mode = mode
        self.loop = asyncio.new_event_loop()
        self.retired: list[Any] = []
        self.running: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="groqpolicy-shadow", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    async def _run(self) -> None:
        self.running = asyncio.current_task()
        queue = self.mode.queue
        while True:
            await asyncio.sleep(TICK_S)
            await self._close_retired()
            items = [queue.popleft() for _ in range(len(queue))]
            if items:
                try:
                    await self.mode.compare(items)
                except Exception:
                    log.exception("shadow: a comparison round failed")

    def retire(self, shadow: Any) -> None:
        self.retired.append(shadow)  # closed on the shadow thread, between rounds

    async def _close_retired(self) -> None:
        while self.retired:
            shadow = self.retired.pop()
            if shadow.pipeline is not None:
                await shadow.pipeline.stop()
            shadow.evaluator.close()

    async def _shutdown(self) -> None:
        if self.running is not None:
            self.running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.running
        await self._close_retired()

    def stop(self) -> None:
        """From another thread: end the rounds, close what was retired, stop the loop."""
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=5)
        except (TimeoutError, RuntimeError):
            log.warning("shadow: the shadow thread did not stop in time")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


def threadsafe_ask(ask: AskModel, loop: Callable[[], asyncio.AbstractEventLoop | None]) -> AskModel:
    """`ask` (bound to the serving loop's NATS client) for a caller on another loop (the shadow thread)."""

    async def call(tier: str, body: bytes) -> tuple[int, bytes, int]:
        target = loop()
        if target is None:
            raise RuntimeError("no serving loop for model calls")

        async def on_target() -> tuple[int, bytes, int]:
            return await ask(tier, body)

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_target(), target))

    return call

