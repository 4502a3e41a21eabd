"""The API served by a real uvicorn on 127.0.0.1 (a free port), and an httpx client to it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mdpipe.api.app import create_app
from mdpipe.lake import Lake
from mdpipe.settings import load_settings

TOKEN = "tok-Secret-0123456789abcdef"
OTHER_TOKEN = "tok-Other-fedcba9876543210"


class Served:
    """uvicorn running `app` in a background thread until `stop()`."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app = app

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:  # uvicorn's own "startup complete" flag
            assert self.thread.is_alive(), "uvicorn exited during startup"
            assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


ServeFn = Callable[..., tuple[Served, httpx.Client]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeFn]:
    started: list[tuple[Served, httpx.Client]] = []

    def start(
        *,
        sets: tuple[str, ...] = (),
        environ: Mapping[str, str] | None = None,
        lake: Lake | None = None,
        fast_path: Any = None,
    ) -> tuple[Served, httpx.Client]:
        env = {"MDPIPE_API_TOKEN": f"{TOKEN},{OTHER_TOKEN}"} if environ is None else dict(environ)
        settings = load_settings(sets=list(sets), environ={})
        app = create_app(
            settings, lake or Lake(tmp_path / "lake"), environ=env, fast_path=fast_path
        )
        s = Served(app).start()
        c = httpx.Client(base_url=s.url, timeout=30.0)
        started.append((s, c))
        return s, c

    yield start
    for s, c in started:
        c.close()
        s.stop()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def lake_files(root: Path) -> list[str]:
    """Everything on disk under the lake (files and sizes), to show a request changed nothing."""
    return sorted(
        f"{p.relative_to(root)}:{p.stat().st_size}"
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    )
