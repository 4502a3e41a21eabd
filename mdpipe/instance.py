"""The one persistent Dagster instance that `mdpipe run`, `mdpipe demo`, the sensors and
`dagster dev` share.

Its home is `$DAGSTER_HOME` when set, else `.dagster_home/` under the working directory (the
project root, where `dagster dev` runs; git-ignored), created on first use with a copy of the
project's `dagster.yaml`. So after `make demo`, `mdpipe dev` (or `dagster dev` with
`DAGSTER_HOME` pointing at the same folder) shows the demo's runs, materialisations, checks
and asset metadata. A shared deployment points `DAGSTER_HOME` at a folder holding
`deploy/dagster.yaml` instead (run storage in PostgreSQL; see deploy/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

HOME_ENV = "DAGSTER_HOME"
PROJECT_HOME = ".dagster_home"
# the project's instance settings (run coordinator, telemetry), copied into a new home
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
_OPEN_LOCK = ".mdpipe-open.lock"


def dagster_home(cwd: Path | None = None) -> Path:
    """The instance folder (absolute, as Dagster requires): `$DAGSTER_HOME`, else
    `<cwd>/.dagster_home`; created with the project's `dagster.yaml` when it does not exist."""
    env = os.environ.get(HOME_ENV)
    home = Path(env).expanduser() if env else (cwd or Path.cwd()) / PROJECT_HOME
    home = home.resolve()
    if not home.is_dir():
        if home.exists():
            raise NotADirectoryError(f"{HOME_ENV} {home} exists and is not a folder")
        home.mkdir(parents=True, exist_ok=True)
        _install_config(home)
    elif not env:
        _install_config(home)  # the project folder: (re)create a deleted dagster.yaml
    return home


def _install_config(home: Path) -> None:
    target = home / "dagster.yaml"
    if target.exists() or not PROJECT_DAGSTER_YAML.is_file():
        return
    from mdpipe.lake.atomic import atomic_write_bytes

    atomic_write_bytes(target, PROJECT_DAGSTER_YAML.read_bytes())


@contextlib.contextmanager
def open_instance(cwd: Path | None = None) -> Iterator[dg.DagsterInstance]:
    """The persistent instance at `dagster_home()`.

    The first open of a SQLite home creates its databases; two `mdpipe run` processes started
    together on a fresh home would race on that, so opening is serialised by a lock file in the
    home (a Postgres-backed home takes the same path; the lock costs nothing there)."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef
    from filelock import FileLock

    home = dagster_home(cwd)
    with FileLock(str(home / _OPEN_LOCK)):
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    with instance:
        yield instance


def cmd_dev(args: argparse.Namespace) -> int:
    """`dagster dev` on the shared instance: sets `DAGSTER_HOME` and replaces this process."""
    home = dagster_home()
    exe = Path(sys.executable).with_name("dagster")
    dagster = str(exe) if exe.exists() else shutil.which("dagster")
    if dagster is None:
        print("error: the `dagster` command is not installed", file=sys.stderr)
        return 2
    os.environ[HOME_ENV] = str(home)
    extra = list(args.dagster_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    argv: Sequence[str] = [
        dagster,
        "dev",
        *(["-p", str(args.port)] if args.port else []),
        *(["-h", args.host] if args.host else []),
        *extra,
    ]
    print(f"DAGSTER_HOME={home} {' '.join(argv[1:])}", flush=True)
    os.execv(dagster, list(argv))
    return 0  # not reached


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dev",
        help="`dagster dev` on the instance `mdpipe run` and `mdpipe demo` use "
        "($DAGSTER_HOME, else ./.dagster_home)",
    )
    p.add_argument("-p", "--port", type=int, default=None, help="the UI's port (default 3000)")
    p.add_argument("--host", default=None, help="the UI's host (default 127.0.0.1)")
    p.add_argument(
        "dagster_args",
        nargs=argparse.REMAINDER,
        help="more `dagster dev` options after `--` (e.g. -- --log-level debug)",
    )
    p.set_defaults(func=cmd_dev)


__all__ = ["dagster_home", "open_instance", "register_cli"]
