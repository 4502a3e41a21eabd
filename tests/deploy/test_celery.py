"""A backfill on a shared deployment, the standard way: PostgreSQL storage, the queued run
coordinator and the daemon (deploy/dagster.yaml), `pipeline_celery_job` sending every step to
two Celery workers over a Redis broker (deploy/celery.yaml), all real processes on 127.0.0.1.
The first worker to receive a step is killed (SIGKILL, its whole process group) the moment
it logs the step's arrival, so mid-step: the broker hands the unacknowledged step to the other
worker, every run succeeds, and the Parquet outputs equal the local run's."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import dagster as dg
import polars as pl
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.instance.ref import InstanceRef

from mdpipe.defs.jobs import CELERY_BACKEND_ENV, CELERY_BROKER_ENV
from mdpipe.defs.partitions import partition_key
from mdpipe.lake import Lake
from tests.deploy.conftest import PARTS, ROOT, assert_same_outputs, copy_lake, derived_frames
from tests.deploy.services import PostgresServer, RedisServer
from tests.deploy.test_postgres import postgres_home

BIN = Path(sys.executable).parent
JOB = "pipeline_celery_job"
# Redis re-delivers an unacknowledged step after this long (deploy/celery.yaml: an hour); here
# it must only exceed the longest step of these small partitions on a loaded machine
VISIBILITY_TIMEOUT_S = 45
FINISHED = {
    DagsterEventType.RUN_SUCCESS,
    DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELED,
}


def worker_config(tmp: Path) -> Path:
    """deploy/celery.yaml with a re-delivery delay fit for a test."""
    cfg = yaml.safe_load((ROOT / "deploy" / "celery.yaml").read_text())
    opts = cfg["execution"]["config"]["config_source"]["broker_transport_options"]
    opts.update(visibility_timeout=VISIBILITY_TIMEOUT_S, unacked_restore_interval=1)
    path = tmp / "celery.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@dataclass
class Proc:
    """A process started in a session of its own: stopping it signals its whole group (the
    `dagster-celery` wrapper and the `celery` worker it starts), by process id."""

    name: str
    popen: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    on_line: Callable[[Proc, str], None] | None = None

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> Proc:
        popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        return cls(name, popen)

    @property
    def pgid(self) -> int:
        return self.popen.pid

    def wait_for(self, marker: str) -> None:
        """Read the log until `marker` (the process's own readiness line), then keep draining."""
        stream: IO[str] | None = self.popen.stdout
        assert stream is not None
        for line in stream:
            self.log.append(line.rstrip())
            if marker in line:
                threading.Thread(target=self._drain, args=(stream,), daemon=True).start()
                return
        raise AssertionError(f"{self.name} exited before {marker!r}:\n" + "\n".join(self.log))

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.log.append(line.rstrip())
            if self.on_line is not None:
                self.on_line(self, line)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the group, wait for the leader, then make sure nothing of it is left (the
        `celery` child outlives the `dagster-celery` wrapper on SIGTERM)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        self.popen.wait()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.kill(signal.SIGTERM)


RECEIVED = re.compile(r"Task execute_plan\[(?P<task>[0-9a-f-]+)\] received")


class KillFirstReceiver:
    """Kills (SIGKILL, whole process group) the first worker that receives a step, from the
    thread reading that worker's log, the moment the worker logs the step's arrival: the step
    (its code loading, then its work) is then certainly still running, unacknowledged."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.victim: tuple[Proc, str] | None = None  # worker, Celery task id of its step
        self.killed = threading.Event()

    def __call__(self, worker: Proc, line: str) -> None:
        m = RECEIVED.search(line)
        if m is None:
            return
        with self.lock:
            if self.victim is not None:
                return
            self.victim = (worker, m["task"])
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pgid, signal.SIGKILL)
        self.killed.set()


class RunWatch:
    """Every event of the backfill's runs, as the event log storage delivers them, until
    every run has finished."""

    def __init__(self, instance: dg.DagsterInstance, run_ids: list[str]):
        self.instance = instance
        self.run_ids = run_ids
        self.lock = threading.Lock()
        self.events: list[dg.EventLogEntry] = []
        self.finished: set[str] = set()
        self.all_finished = threading.Event()
        self.handlers = {rid: self._handler(rid) for rid in run_ids}

    def _handler(self, run_id: str) -> Any:
        def on_event(entry: dg.EventLogEntry, _cursor: str) -> None:
            with self.lock:
                self.events.append(entry)
                if entry.dagster_event_type in FINISHED:
                    self.finished.add(run_id)
                    if self.finished >= set(self.run_ids):
                        self.all_finished.set()

        return on_event

    def __enter__(self) -> RunWatch:
        for rid, h in self.handlers.items():
            self.instance.event_log_storage.watch(rid, None, h)
        return self

    def __exit__(self, *exc: object) -> None:
        for rid, h in self.handlers.items():
            self.instance.event_log_storage.end_watch(rid, h)


def test_backfill_on_two_celery_workers_survives_a_killed_worker(
    postgres: PostgresServer,
    redis_server: RedisServer,
    small_lake: Lake,
    local_outputs: dict[str, pl.DataFrame],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = postgres_home(tmp_path, postgres, "mdpipe_celery", monkeypatch)
    lake = copy_lake(small_lake, tmp_path / "lake")
    env = {
        **os.environ,
        "MDPIPE_LAKE": str(lake.root),  # the steps' lake, in every worker
        CELERY_BROKER_ENV: redis_server.url(0),
        CELERY_BACKEND_ENV: redis_server.url(1),
        "PYTHONUNBUFFERED": "1",
        # `dagster-celery worker start` runs `celery` from PATH, as in an activated venv
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    keys = [str(partition_key(date, market)) for date, market in PARTS]
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        instance.add_dynamic_partitions("market", sorted({m for _, m in PARTS}))
        cfg = worker_config(tmp_path)
        killer = KillFirstReceiver()
        with processes() as procs:
            workers = []
            for name in ("w1", "w2"):
                # --pool=solo: the step runs in the worker process itself, so killing the
                # worker kills the step with it
                w = Proc.start(
                    name,
                    [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                     "-y", str(cfg), "-n", name, "--loglevel", "INFO", "--", "--pool=solo"],
                    env, tmp_path,
                )  # fmt: skip
                w.on_line = killer
                procs.append(w)
                w.wait_for(" ready.")
                workers.append(w)
            daemon = Proc.start(
                "daemon",
                [str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                env,
                tmp_path,
            )
            procs.append(daemon)
            out = subprocess.run(
                [str(BIN / "dagster"), "job", "backfill", "-j", JOB, "-w",
                 str(ROOT / "workspace.yaml"), "--partitions", ",".join(keys), "--noprompt"],
                env=env, cwd=tmp_path, capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert out.returncode == 0, out.stdout + out.stderr
            runs = instance.get_runs(dg.RunsFilter(job_name=JOB))
            assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(keys)
            # the tags deploy/dagster.yaml's concurrency limits use
            for r in runs:
                assert r.tags["mdpipe/job"] == JOB
                assert r.tags["dagster/partition/market"] in r.tags["dagster/partition"]
            with RunWatch(instance, [r.run_id for r in runs]) as watch:
                assert killer.killed.wait(timeout=600), "no worker received a step:\n" + (
                    "\n".join(daemon.log[-40:])
                )
                assert killer.victim is not None
                victim, task_id = killer.victim
                victim.kill(signal.SIGKILL)  # reap it
                assert watch.all_finished.wait(timeout=900), "\n".join(daemon.log[-40:])
                events = list(watch.events)

    survivor = next(w for w in workers if w is not victim)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        final = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(job_name=JOB))}
    failed = {rid: r.status for rid, r in final.items() if not r.is_success}
    assert not failed, (failed, survivor.log[-30:])
    # every run waited in the queue (the daemon's run coordinator started it)
    enqueued = {e.run_id for e in events if e.dagster_event_type == DagsterEventType.RUN_ENQUEUED}
    assert enqueued == set(final)

    # the step the killed worker held was handed to the other worker, which ran it
    survivor_log = "\n".join(survivor.log)
    assert f"Task execute_plan[{task_id}] received" in survivor_log, survivor.log[-30:]
    assert f"Task execute_plan[{task_id}] succeeded" in survivor_log, survivor.log[-30:]
    assert not any("succeeded" in line for line in victim.log), victim.log
    n_steps = len(final) * 4  # features_and_signals, labels, cv_folds, evaluation
    assert survivor_log.count("] succeeded in ") >= n_steps

    assert_same_outputs(derived_frames(lake), local_outputs)
