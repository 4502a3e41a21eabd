"""The local exchange on its own event loop in a background thread, for tests whose own thread
runs something else (Dagster, a capture subprocess being watched)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from mdpipe.venues.binance.simulator import ExchangeSim


class SimThread:
    def __init__(self, files: list[Path], **kw: Any) -> None:
        self.files = files
        self.kw = kw
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.sim: ExchangeSim | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.sim = ExchangeSim(self.files, **self.kw)
        self.loop.run_until_complete(self.sim.start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> ExchangeSim:
        self.thread.start()
        assert self.ready.wait(60), "the exchange simulator did not start within 60 s"
        assert self.sim is not None
        return self.sim

    def finished(self) -> bool:
        return self.sim is not None and self.sim.finished.is_set()

    def wait_finished(self, timeout: float) -> bool:
        """Block until the replay has finished (True) or `timeout` seconds passed (False): woken
        by the simulator's own event, so a watcher loop reacts the moment it happens."""
        assert self.sim is not None
        fut = asyncio.run_coroutine_threadsafe(self.sim.finished.wait(), self.loop)
        try:
            fut.result(timeout)
            return True
        except TimeoutError:
            fut.cancel()
            return False

    def stop(self) -> None:
        if self.sim is not None:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
