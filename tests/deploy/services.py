"""Throwaway PostgreSQL and Redis servers on 127.0.0.1 for the tests: started as child
processes (their readiness read from their own log line, never waited out), stopped by
process id."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

POSTGRES_READY = "database system is ready to accept connections"
REDIS_READY = "Ready to accept connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_postgres_bin() -> Path | None:
    """Debian's server binaries (/usr/lib/postgresql/<major>/bin), the newest major."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def find_redis() -> str | None:
    return shutil.which("redis-server")


def _wait_for_line(stream: IO[str], marker: str, proc: subprocess.Popen[str]) -> list[str]:
    """Read the server's log until `marker` (its own readiness line) or until it exits."""
    seen: list[str] = []
    for line in stream:
        seen.append(line.rstrip())
        if marker in line:
            return seen
    proc.wait()
    raise RuntimeError(f"server exited ({proc.returncode}) before ready:\n" + "\n".join(seen))


def _stop(proc: subprocess.Popen[str], sig: int) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of its own: initdb as the `postgres` user when run as root (the
    server refuses root), trust auth on 127.0.0.1 only, fsync off (throwaway data)."""

    proc: subprocess.Popen[str]
    port: int
    user: str = "postgres"
    host: str = "127.0.0.1"

    @classmethod
    @contextlib.contextmanager
    def start(cls, bindir: Path) -> Iterator[PostgresServer]:
        # pytest's temporary folders are private to their owner; the server's user must be
        # able to reach its data folder, so it gets a folder of its own under /tmp
        workdir = Path(tempfile.mkdtemp(prefix="mdpipe-pg-"))
        run_as: dict[str, object] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
            run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        try:
            with cls._run(bindir, workdir, run_as) as server:
                yield server
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def _run(
        cls, bindir: Path, workdir: Path, run_as: dict[str, object]
    ) -> Iterator[PostgresServer]:
        data = workdir / "data"
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, text=True, cwd=workdir, **run_as,  # type: ignore[arg-type]
        )  # fmt: skip
        port = free_port()
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(workdir), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=workdir,
            **run_as,  # type: ignore[arg-type]
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            _wait_for_line(proc.stderr, POSTGRES_READY, proc)
            # keep draining the log so the server never blocks on a full pipe
            drain = proc.stderr
            threading.Thread(target=lambda: [None for _ in drain], daemon=True).start()
            yield cls(proc, port)
        finally:
            _stop(proc, signal.SIGINT)  # "fast" shutdown

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')  # name chosen by the test
        finally:
            conn.close()
        return name

    def query(self, db: str, sql: str) -> list[tuple[object, ...]]:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()


@dataclass
class RedisServer:
    proc: subprocess.Popen[str]
    port: int
    host: str = "127.0.0.1"

    @classmethod
    @contextlib.contextmanager
    def start(cls, exe: str, workdir: Path) -> Iterator[RedisServer]:
        port = free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--daemonize", "no", "--loglevel", "notice"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=workdir,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            _wait_for_line(proc.stdout, REDIS_READY, proc)
            drain = proc.stdout
            threading.Thread(target=lambda: [None for _ in drain], daemon=True).start()
            yield cls(proc, port)
        finally:
            _stop(proc, signal.SIGTERM)

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"
