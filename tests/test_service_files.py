"""The files users copy as they are (the example settings, the capture service folder) load and
say what they claim."""

from __future__ import annotations

import argparse
import configparser
import shlex
from pathlib import Path

import pytest

from mdpipe.capture.cli import add_capture_args
from mdpipe.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", ["mdpipe.toml.example", "capture/capture.toml"])
def test_example_settings_load(path: str) -> None:
    s = load_settings(ROOT / path, environ={})
    assert tuple(s.capture["symbols"]) == ("BTC/USDT", "ETH/USDT")
    assert s.capture_config().venue == "binance"
    assert len(s.settings_id) == 12


def test_the_systemd_unit_runs_a_valid_capture_command() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "capture" / "mdpipe-capture.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/.venv/bin/mdpipe") and argv[1] == "capture"
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_capture_args(parser)
    parser.parse_args(argv[2:])  # raises on an unknown flag
    text = (ROOT / "capture" / "mdpipe-capture.service").read_text()
    env = dict(
        line.removeprefix("Environment=").split("=", 1)
        for line in text.splitlines()
        if line.startswith("Environment=")
    )
    assert set(env) == {"MDPIPE_CONFIG", "MDPIPE_LAKE"}
