"""One persistent instance by default: `mdpipe run` records into `$DAGSTER_HOME`, else
`./.dagster_home` (created on first use with the project's dagster.yaml), and that is the
instance `dagster dev` and the Dagster CLI open."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from mdpipe.cli import main
from mdpipe.instance import HOME_ENV, PROJECT_DAGSTER_YAML, PROJECT_HOME, dagster_home
from mdpipe.lake import Lake
from tests.deploy.conftest import MARKET, copy_lake

DATE = "2024-07-18"


def open_home(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))


def test_mdpipe_run_records_into_the_project_home_that_the_cli_opens(
    small_lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = copy_lake(small_lake, tmp_path / "lake")
    monkeypatch.delenv(HOME_ENV)
    monkeypatch.chdir(tmp_path)
    rc = main(["run", "--lake", str(lake.root), "--market", MARKET, "--date", DATE])
    assert rc == 0
    home = tmp_path / PROJECT_HOME
    assert (home / "dagster.yaml").read_bytes() == PROJECT_DAGSTER_YAML.read_bytes()
    with open_home(home) as instance:
        runs = instance.get_runs()
        assert {r.tags.get("mdpipe/stage") for r in runs} >= {"features", "labels"}
        assert all(r.is_success for r in runs), [(r.job_name, r.status) for r in runs]
        for asset in ("features", "signals", "labels", "cv_folds", "evaluation"):
            parts = instance.get_materialized_partitions(dg.AssetKey(asset))
            assert parts == {f"{DATE}|{MARKET}"}, asset
        check = dg.AssetCheckKey(dg.AssetKey("features"), "no_crossed_book")
        history = instance.event_log_storage.get_asset_check_execution_history(check, limit=5)
        assert history and history[0].status.value == "SUCCEEDED"
        # the asset metadata the UI shows is in the stored materialisation
        mat = instance.get_latest_materialization_event(dg.AssetKey("features"))
        assert mat is not None and mat.asset_materialization is not None
        assert mat.asset_materialization.metadata["dagster/row_count"].value > 0
    # the Dagster CLI (what `dagster dev` uses to find its instance) sees the same runs
    env = {**os.environ, HOME_ENV: str(home)}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "run", "list", "--limit", "50"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert sum(line.startswith("Run: ") for line in out.splitlines()) == len(runs), out


def test_dagster_home_wins_and_the_working_directory_stays_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "elsewhere" / "home"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv(HOME_ENV, str(home))
    monkeypatch.chdir(cwd)
    assert dagster_home() == home.resolve()
    assert (home / "dagster.yaml").is_file()  # a new home gets the project's settings
    assert list(cwd.iterdir()) == []
    # an existing home is the user's: its dagster.yaml is never replaced
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster_home()
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_a_file_named_like_the_home_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "not-a-dir"))
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(NotADirectoryError, match="not-a-dir exists and is not a folder"):
        dagster_home()


def test_two_processes_opening_a_new_home_together_both_succeed(tmp_path: Path) -> None:
    """Two `mdpipe run`s started at once on a fresh project: the first open creates the
    SQLite databases under a lock, so neither trips over the other."""
    code = (
        "from mdpipe.instance import open_instance\n"
        "with open_instance() as inst:\n"
        "    inst.add_dynamic_partitions('market', ['m'])\n"
        "    print(len(inst.get_runs()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != HOME_ENV}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == "0"
    with open_home(tmp_path / PROJECT_HOME) as instance:
        assert instance.get_dynamic_partitions("market") == ["m"]


def test_mdpipe_dev_runs_dagster_dev_on_the_project_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str], str | None]] = []

    def execv(path: str, argv: list[str]) -> None:  # the process would be replaced here
        calls.append((path, argv, os.environ.get(HOME_ENV)))

    monkeypatch.delenv(HOME_ENV)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execv", execv)
    assert main(["dev", "-p", "3001", "--", "--log-level", "debug"]) == 0
    [(path, argv, home)] = calls
    assert Path(path).name == "dagster"
    assert argv[1:] == ["dev", "-p", "3001", "--log-level", "debug"]
    assert home == str((tmp_path / PROJECT_HOME).resolve())
    assert (tmp_path / PROJECT_HOME / "dagster.yaml").is_file()
