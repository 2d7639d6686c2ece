"""uvicorn server with a draining shutdown (SIGINT / SIGTERM)."""

from __future__ import annotations

import asyncio
import time

import uvicorn

from pitstop.server.async_engine import AsyncEngine


class DrainingServer(uvicorn.Server):
    """On SIGINT/SIGTERM: stop accepting connections, let in-flight requests finish for up to ``drain_s``
    seconds, then stop the engine thread (requests still running end with an error event, or 503), then
    run uvicorn's own shutdown (close connections, lifespan shutdown). A second signal skips the drain.

    Args:
        config: the uvicorn config.
        async_engine: the app's engine front.
        drain_s: seconds in-flight requests get to finish.
    """

    def __init__(self, config: uvicorn.Config, async_engine: AsyncEngine, drain_s: float) -> None:
        super().__init__(config)
        self.async_engine = async_engine
        self.drain_s = drain_s

    async def shutdown(self, sockets=None) -> None:
        for server in self.servers:
            server.close()
        deadline = time.monotonic() + self.drain_s
        while self.async_engine.num_outstanding and time.monotonic() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(self.async_engine.shutdown)
        await asyncio.sleep(0.2)  # let the streams write their final error events
        await super().shutdown(sockets)
