"""A backfill on a shared deployment, the standard way: PostgreSQL storage, the queued run
coordinator and the daemon (deploy/dagster.yaml), `pipeline_celery_job` sending every step to
two Celery workers over a Redis broker (deploy/celery.yaml), all real processes on 127.0.0.1.
One worker is killed (SIGKILL, its whole process group) while it runs a step: the broker hands
the unacknowledged step to the other worker, every run succeeds, and the Parquet outputs equal
the local run's."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
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
KILL_STEP = "features_and_signals"
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


class RunWatch:
    """Every event of the backfill's runs, as the event log storage delivers them: the worker
    to kill is chosen on a step start, and the test waits for every run to finish."""

    def __init__(self, instance: dg.DagsterInstance, run_ids: list[str], workers: list[Proc]):
        self.instance = instance
        self.run_ids = run_ids
        self.workers = {w.pgid: w for w in workers}
        self.lock = threading.Lock()
        self.events: list[dg.EventLogEntry] = []
        self.victim: tuple[Proc, str, int] | None = None  # worker, run id, pid of the step
        self.step_started = threading.Event()
        self.finished: set[str] = set()
        self.all_finished = threading.Event()
        self.handlers = {rid: self._handler(rid) for rid in run_ids}

    def _handler(self, run_id: str) -> Any:
        def on_event(entry: dg.EventLogEntry, _cursor: str) -> None:
            with self.lock:
                self.events.append(entry)
                kind = entry.dagster_event_type
                pid = entry.dagster_event.pid if entry.dagster_event else None
                if (
                    kind == DagsterEventType.STEP_START
                    and entry.step_key == KILL_STEP
                    and not self.victim
                    and pid is not None
                    and _alive(pid)
                    and os.getpgid(pid) in self.workers
                ):
                    self.victim = (self.workers[os.getpgid(pid)], run_id, pid)
                    self.step_started.set()
                if kind in FINISHED:
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
            with RunWatch(instance, [r.run_id for r in runs], workers) as watch:
                assert watch.step_started.wait(timeout=600), (
                    "no step started on a worker:\n" + "\n".join(daemon.log[-40:])
                )
                assert watch.victim is not None
                victim, victim_run, victim_pid = watch.victim
                victim.kill(signal.SIGKILL)
                assert watch.all_finished.wait(timeout=900), "\n".join(daemon.log[-40:])
                events = list(watch.events)

    survivor = next(w for w in workers if w is not victim)
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        final = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(job_name=JOB))}
    failed = {rid: r.status for rid, r in final.items() if not r.is_success}
    assert not failed, (failed, survivor.log[-30:])

    # the killed worker's step never finished there; the other worker ran it to success
    by_pid = {
        (e.dagster_event_type, e.dagster_event.pid)
        for e in events
        if e.run_id == victim_run and e.step_key == KILL_STEP and e.dagster_event
    }
    assert (DagsterEventType.STEP_START, victim_pid) in by_pid
    assert (DagsterEventType.STEP_SUCCESS, victim_pid) not in by_pid, "killed too late"
    assert any(
        kind == DagsterEventType.STEP_SUCCESS and pid != victim_pid for kind, pid in by_pid
    ), by_pid

    assert_same_outputs(derived_frames(lake), local_outputs)
