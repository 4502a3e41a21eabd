"""The settings model: discovery, layering, errors, settings_id, the CLI and Dagster resources."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from mdpipe.capture.cli import add_capture_args, build_config
from mdpipe.cli import main
from mdpipe.core.config import BacktestConfig
from mdpipe.core.detectors.ensemble import DetectorConfig
from mdpipe.core.features import FeatureConfig
from mdpipe.settings import (
    FIELDS,
    SECTIONS,
    Settings,
    SettingsError,
    load_settings,
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---- discovery and precedence ---------------------------------------------------------------


def test_file_then_environment_then_set_then_flags(tmp_path: Path) -> None:
    f = write(
        tmp_path / "my.toml",
        "[detectors]\ndrift_threshold = 4\ncooldown_seconds = 45\n"
        "[capture]\nsymbols = ['BTC/USDT']\nflush_interval_s = 2\nstale_after_s = 7\n",
    )
    env = {"MDPIPE_DETECTORS_DRIFT_THRESHOLD": "5", "MDPIPE_CAPTURE_FLUSH_INTERVAL_S": "3"}
    s = load_settings(f, environ=env)
    assert s.detectors.drift_threshold == 5.0  # env beats file
    assert s.detectors.cooldown_seconds == 45.0  # file beats default
    assert s.detectors.burst_threshold == DetectorConfig().burst_threshold  # default
    s = load_settings(f, ["detectors.drift_threshold=6", "flush_interval_s=4"], environ=env)
    assert s.detectors.drift_threshold == 6.0  # --set beats env
    assert s.capture_config().flush_interval_s == 4.0
    assert s.capture_config().stale_after_s == 7.0

    # the capture command: same layers, then its own flags
    p = argparse.ArgumentParser()
    add_capture_args(p)
    args = p.parse_args(["--config", str(f), "--set", "capture.flush_interval_s=4"])
    assert build_config(args, env).flush_interval_s == 4.0
    args = p.parse_args(
        ["--config", str(f), "--set", "flush_interval_s=4", "--flush-interval", "9"]
    )
    assert build_config(args, env).flush_interval_s == 9.0  # a flag beats --set
    assert build_config(p.parse_args(["--config", str(f)]), env).flush_interval_s == 3.0


def test_config_env_then_working_directory_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "project"
    here.mkdir()
    monkeypatch.chdir(here)
    assert load_settings(environ={}) == Settings()  # nothing found: the defaults
    local = write(here / "mdpipe.toml", "[detectors]\nburst_threshold = 3.0\n")
    s = load_settings(environ={})
    assert s.detectors.burst_threshold == 3.0
    assert s.source and Path(s.source).resolve() == local.resolve()
    other = write(tmp_path / "other.toml", "[detectors]\nburst_threshold = 4.0\n")
    s = load_settings(environ={"MDPIPE_CONFIG": str(other)})
    assert (s.detectors.burst_threshold, s.source) == (4.0, str(other))
    explicit = write(tmp_path / "explicit.toml", "[detectors]\nburst_threshold = 5.0\n")
    s = load_settings(explicit, environ={"MDPIPE_CONFIG": str(other)})
    assert s.detectors.burst_threshold == 5.0
    with pytest.raises(SettingsError, match=r"'.*missing.toml' \(\$MDPIPE_CONFIG\) does not exist"):
        load_settings(environ={"MDPIPE_CONFIG": str(tmp_path / "missing.toml")})
    with pytest.raises(SettingsError, match=r"\(--config\) does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


# ---- errors ---------------------------------------------------------------------------------


def test_a_bad_value_names_file_section_key_value_and_range(tmp_path: Path) -> None:
    f = write(tmp_path / "mdpipe.toml", "[detectors]\ndrift_threshold = -1\nburst_threshold = 3\n")
    with pytest.raises(SettingsError) as e:
        load_settings(f, environ={})
    assert str(e.value) == (
        f"{f} [detectors] drift_threshold: drift_threshold must be a finite number > 0, got -1.0"
    )
    f = write(tmp_path / "mdpipe.toml", "[features]\nbocpd_hazard = 2\n")
    with pytest.raises(
        SettingsError,
        match=re.escape(f"{f} [features] bocpd_hazard: BOCPD hazard must be in (0, 1)"),
    ):
        load_settings(f, environ={})
    f = write(tmp_path / "mdpipe.toml", "[backtest]\ncv_n_folds = 3\ncv_n_test_folds = 3\n")
    with pytest.raises(SettingsError, match=re.escape(f"{f} [backtest] cv_n_test_folds: ")):
        load_settings(f, environ={})
    f = write(tmp_path / "mdpipe.toml", '[detectors]\ncooldown_seconds = "long"\n')
    with pytest.raises(
        SettingsError,
        match=re.escape(f"{f} [detectors] cooldown_seconds: expected a number, got 'long'"),
    ):
        load_settings(f, environ={})
    f = write(tmp_path / "mdpipe.toml", "[detectors]\ndynamic_threshold_window = 2.5\n")
    with pytest.raises(
        SettingsError, match=re.escape("dynamic_threshold_window: expected an integer, got 2.5")
    ):
        load_settings(f, environ={})
    with pytest.raises(
        SettingsError,
        match=re.escape(
            "--set [detectors] regime_threshold: regime_threshold is a changepoint probability and must be in (0, 1], got 1.5"
        ),
    ):
        load_settings(sets=["regime_threshold=1.5"], environ={})
    with pytest.raises(
        SettingsError,
        match=re.escape(
            "$MDPIPE_BACKTEST_FEE_RATE ([backtest] fee_rate): expected a number, got 'cheap'"
        ),
    ):
        load_settings(environ={"MDPIPE_BACKTEST_FEE_RATE": "cheap"})


def test_unknown_sections_and_keys_name_what_is_known(tmp_path: Path) -> None:
    f = write(tmp_path / "mdpipe.toml", "[detectors]\ndrift_treshold = 4\n")
    with pytest.raises(SettingsError) as e:
        load_settings(f, environ={})
    known = ", ".join(FIELDS["detectors"])
    assert str(e.value) == (
        f"{f} [detectors]: unknown key 'drift_treshold' (did you mean 'drift_threshold'?); "
        f"the known keys are {known}"
    )
    f = write(tmp_path / "mdpipe.toml", "[detector]\ndrift_threshold = 4\n")
    with pytest.raises(SettingsError) as e:
        load_settings(f, environ={})
    assert str(e.value) == (
        f"{f}: unknown section [detector] (did you mean 'detectors'?); the known sections are "
        "[features], [detectors], [backtest], [alerts], [capture], [cross_venue], [api], [meta]"
    )
    with pytest.raises(SettingsError, match=r"\$MDPIPE_DETECTORS_COOLDOWN: unknown key 'cooldown'"):
        load_settings(environ={"MDPIPE_DETECTORS_COOLDOWN": "5"})
    with pytest.raises(SettingsError, match=r"--set detectors.cooldown \[detectors\]: unknown key"):
        load_settings(sets=["detectors.cooldown=5"], environ={})
    with pytest.raises(
        SettingsError,
        match=r"--set cooldown: no section has a key 'cooldown' \(did you mean 'cooldown_seconds'\?\)",
    ):
        load_settings(sets=["cooldown=5"], environ={})
    with pytest.raises(
        SettingsError, match=r"--set expects section.name=value, got 'drift_threshold'"
    ):
        load_settings(sets=["drift_threshold"], environ={})


def test_an_ambiguous_unqualified_set_lists_the_candidates() -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(sets=["lake=/data/lake"], environ={})
    assert str(e.value) == (
        "--set lake: ambiguous, 'lake' is a key of several sections; write one of "
        "alerts.lake, capture.lake"
    )
    s = load_settings(sets=["alerts.lake=/data/lake"], environ={})
    assert s.alerts.lake == "/data/lake" and "lake" not in s.capture


def test_the_cli_reports_a_bad_setting_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(tmp_path / "bad.toml", "[detectors]\ncooldown_seconds = -5\n")
    assert main(["settings", "--config", str(f)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "[detectors] cooldown_seconds: cooldown_seconds must be a finite number >= 0, got -5.0"
        in err
    )
    assert main(["run", "--lake", str(tmp_path / "lake"), "--config", str(f)]) == 2


# ---- settings_id ----------------------------------------------------------------------------


def test_settings_id_hashes_features_and_detectors_only() -> None:
    base = load_settings(environ={}).settings_id
    assert re.fullmatch(r"[0-9a-f]{12}", base)
    same = [
        "backtest.fee_rate=0.0004",
        "alerts.digest_min=4",
        "capture.flush_interval_s=2",
        "detectors.drift_threshold=3",  # an int equal to the default float
    ]
    for item in same:
        assert load_settings(sets=[item], environ={}).settings_id == base, item
    for item in ("detectors.cooldown_seconds=31", "features.zscore_halflife=2000"):
        assert load_settings(sets=[item], environ={}).settings_id != base, item


# ---- `mdpipe settings` ----------------------------------------------------------------------


def test_mdpipe_settings_prints_toml_that_loads_back_to_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write(
        tmp_path / "in.toml",
        "[detectors]\ndrift_threshold = 4.5\n[capture]\nsymbols = ['BTC/USDT']\n",
    )
    assert main(["settings", "--config", str(f), "--set", "backtest.cv_method=cpcv"]) == 0
    text = capsys.readouterr().out
    want = load_settings(f, ["backtest.cv_method=cpcv"], environ={})
    assert f"# settings_id = {want.settings_id}" in text
    for section in SECTIONS:
        assert f"\n[{section}]\n" in text
    # every key is there, with its description above it
    assert (
        "# CUSUM threshold h, in standard deviations of each input.\ndrift_threshold = 4.5" in text
    )
    saved = write(tmp_path / "saved.toml", text)
    again = load_settings(saved, environ={})
    for section in SECTIONS:
        assert again.section(section) == want.section(section), section
    assert again.settings_id == want.settings_id


# ---- Dagster resources ----------------------------------------------------------------------


def test_dagster_resources_show_every_field_with_default_and_description(tmp_path: Path) -> None:
    from mdpipe.defs import build_defs

    settings = load_settings(sets=["detectors.burst_threshold=3.25"], environ={})
    defs = build_defs(str(tmp_path / "lake"), settings)
    schema = defs.resolve_job_def("pipeline_job").run_config_schema.config_type
    resources = schema.fields["resources"].config_type.fields
    for section, cls in (
        ("features", FeatureConfig),
        ("detectors", DetectorConfig),
        ("backtest", BacktestConfig),
    ):
        fields = resources[section].config_type.fields["config"].config_type.fields
        assert set(fields) == {f.name for f in dataclasses.fields(cls)}, section
        for name, fld in fields.items():
            assert not fld.is_required and fld.description, (section, name)
            assert fld.default_value == settings.section(section)[name], (section, name)
    drift = resources["detectors"].config_type.fields["config"].config_type.fields
    assert drift["burst_threshold"].default_value == 3.25  # the settings' value, not the core's
    assert (
        drift["drift_threshold"].description == FIELDS["detectors"]["drift_threshold"].description
    )


def test_a_bad_run_config_value_fails_with_the_settings_message() -> None:
    from mdpipe.defs.resources import DetectorsResource

    assert DetectorsResource().get() == DetectorConfig()
    assert DetectorsResource(cooldown_seconds=60.0).get().cooldown_seconds == 60.0
    with pytest.raises(
        SettingsError,
        match=re.escape(
            "run config [detectors] dynamic_quantile: dynamic_quantile must be in [0, 1], got 2.0"
        ),
    ):
        DetectorsResource(dynamic_quantile=2.0).get()
