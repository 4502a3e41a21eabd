"""One settings model for every command, live and batch: `mdpipe.toml`.

    [features]    mdpipe.core.features.FeatureConfig          (windows, z-scores, BOCPD, book grid)
    [detectors]   mdpipe.core.detectors.ensemble.DetectorConfig (thresholds, cooldown, quantile)
    [backtest]    mdpipe.core.config.BacktestConfig            (costs, barriers, CV, thresholds)
    [alerts]      mdpipe.alerts.config.AlertConfig             (delivery policy, sensor lookback)
    [capture]     mdpipe.capture.config.CaptureConfig          (venue, symbols, intervals, ...)
    [cross_venue] mdpipe.core.crossvenue.CrossVenueConfig      (basis grid, lead-lag, detector)
    [api]         mdpipe.api.config.ApiConfig                  (`mdpipe serve`: bind, limits)
    [meta]        mdpipe.core.meta.MetaConfig                  (meta-model for meta_prob, alerts)

Each section IS the validated dataclass named above: this module holds no copy of a field, a
default or a range. It finds the file, merges the layers, converts text to each field's type,
and puts the file, section and key in front of the dataclass's own message when a value is bad.

Where the file comes from: `--config FILE`, else `$MDPIPE_CONFIG`, else `./mdpipe.toml` when it
exists, else nothing (the defaults). Layers, lowest priority first:

    defaults < the file < environment `MDPIPE_<SECTION>_<KEY>` (and `MDPIPE_LAKE` for
    capture.lake) < `--set section.key=value` (repeatable) < a command's own flags

`--set key=value` without a section works when exactly one section has that key.

`settings_id` (`mdpipe.core.config.settings_id`) is the short hash of the effective
`[features]` and `[detectors]`: batch and live signal rows carry it. `cross_venue` signal rows
carry `Settings.cross_venue_settings_id`, which hashes `[cross_venue]` as well (it decides them).

The `[capture]` section is kept as validated overrides rather than a `CaptureConfig`, because a
`CaptureConfig` needs its symbols, which usually come from the command line when capture
starts; `Settings.capture_config(...)` builds the real one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdpipe.alerts.config import AlertConfig
from mdpipe.api.config import ApiConfig
from mdpipe.capture.config import CaptureConfig
from mdpipe.core.config import BacktestConfig, settings_id
from mdpipe.core.crossvenue import CrossVenueConfig
from mdpipe.core.detectors.ensemble import DetectorConfig
from mdpipe.core.features import FeatureConfig
from mdpipe.core.meta import MetaConfig

CONFIG_ENV = "MDPIPE_CONFIG"
DEFAULT_FILE = "mdpipe.toml"
SECTIONS: dict[str, type] = {
    "features": FeatureConfig,
    "detectors": DetectorConfig,
    "backtest": BacktestConfig,
    "alerts": AlertConfig,
    "capture": CaptureConfig,
    "cross_venue": CrossVenueConfig,
    "api": ApiConfig,
    "meta": MetaConfig,
}
# sections whose values decide which signals are emitted (what settings_id hashes)
SIGNAL_SECTIONS = ("features", "detectors")
# `CaptureConfig` needs a symbol; this one stands in while the file's values are checked
_PLACEHOLDER_SYMBOLS = ("BASE/QUOTE",)
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


class SettingsError(ValueError):
    """A settings file, environment variable or --set value that cannot be used (the message
    names where it came from, the section, the key, and what is allowed)."""


# ---- field facts, all read off the dataclasses ---------------------------------------------


@dataclass(frozen=True)
class FieldInfo:
    section: str
    name: str
    kind: str  # 'float' | 'int' | 'bool' | 'str' | 'list'
    optional: bool
    default: Any
    description: str

    @property
    def qualified(self) -> str:
        return f"{self.section}.{self.name}"


def _kind(hint: Any) -> tuple[str, bool]:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    if typing.get_origin(hint) in (tuple, list):
        return "list", optional
    for t in (bool, int, float, str):
        if hint is t:
            return t.__name__, optional
    raise TypeError(f"settings cannot carry a field of type {hint!r}")


_NAMES = re.compile(r"^\s+([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*)\s+(\S.*)$")


def docstring_descriptions(cls: type) -> dict[str, str]:
    """Field descriptions from the class docstring's `name   text` lines (several names may
    share one text: `a, b   text`; deeper-indented lines continue it). Only lines whose
    names are all fields of `cls` count, so prose in the docstring is never taken for one."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    current: list[str] = []
    indent = 0
    for line in (cls.__doc__ or "").splitlines():
        m = _NAMES.match(line)
        if m and not {n.strip() for n in m.group(1).split(",")} <= names:
            m = None
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            indent = len(line) - len(line.lstrip())
            for n in current:
                out[n] = m.group(2).strip()
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            for n in current:
                out[n] += " " + line.strip()
        else:
            current = []
    return out


def _fields(section: str) -> dict[str, FieldInfo]:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    docs = docstring_descriptions(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind, optional = _kind(hints[f.name])
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = FieldInfo(
            section, f.name, kind, optional, default, docs.get(f.name, f"{cls.__name__}.{f.name}")
        )
    return out


FIELDS: dict[str, dict[str, FieldInfo]] = {s: _fields(s) for s in SECTIONS}


def _close(word: str, options: Sequence[str]) -> str:
    near = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


# ---- converting values ----------------------------------------------------------------------


def convert(info: FieldInfo, value: Any, *, text: bool) -> Any:
    """`value` as the field's type. `text=True`: a string from --set or the environment;
    otherwise a TOML value, where only an int may stand for a float."""
    kinds = {
        "float": "a number",
        "int": "an integer",
        "bool": "true or false",
        "str": "a string",
        "list": "a list of strings",
    }
    expected = kinds[info.kind] + (" (empty for none)" if info.optional and text else "")
    bad = ValueError(f"expected {expected}, got {value!r}")
    if text:
        s = str(value).strip()
        if info.optional and s.lower() in ("", "none"):
            return None
        try:
            if info.kind == "float":
                return float(s)
            if info.kind == "int":
                return int(s)
        except ValueError:
            raise bad from None
        if info.kind == "bool":
            if s.lower() in _TRUE:
                return True
            if s.lower() in _FALSE:
                return False
            raise bad
        if info.kind == "list":
            return tuple(x.strip() for x in s.split(",") if x.strip())
        return s
    if info.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if info.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if info.kind == "bool" and isinstance(value, bool):
        return value
    if info.kind == "str" and isinstance(value, str):
        return value
    if info.kind == "list":
        if isinstance(value, str):
            return tuple(x.strip() for x in value.split(",") if x.strip())
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return tuple(value)
    raise bad


# ---- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The effective settings of one command (see the module docstring)."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    detectors: DetectorConfig = field(default_factory=DetectorConfig)
    backtest: BacktestConfig = field(default_factory=BacktestConfig)
    alerts: AlertConfig = field(default_factory=AlertConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    # validated `CaptureConfig` overrides; `capture_config()` adds the symbols and flags
    capture: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    api: ApiConfig = field(default_factory=ApiConfig)
    source: str | None = None  # the file these came from, if any
    cross_venue: CrossVenueConfig = field(default_factory=CrossVenueConfig)

    @property
    def settings_id(self) -> str:
        return settings_id(self.features, self.detectors)

    @property
    def cross_venue_settings_id(self) -> str:
        """The id `cross_venue` signal rows carry: `[features]`, `[detectors]` and
        `[cross_venue]` (which decides them)."""
        return settings_id(self.features, self.detectors, self.cross_venue)

    def capture_config(self, **overrides: Any) -> CaptureConfig:
        """The `CaptureConfig` of these settings with a command's flags on top."""
        return CaptureConfig(**{**self.capture, **overrides})

    def section(self, name: str) -> dict[str, Any]:
        """Every field of a section with its effective value."""
        if name == "capture":
            return {n: self.capture.get(n, i.default) for n, i in FIELDS["capture"].items()}
        cfg = getattr(self, name)
        return {n: getattr(cfg, n) for n in FIELDS[name]}

    def run_config(self) -> dict[str, Any]:
        """Dagster run config giving the pipeline's resources these settings (every field, so
        the run does not depend on what the code location discovered)."""
        return {
            "resources": {
                s: {"config": self.section(s)}
                for s in ("features", "detectors", "backtest", "cross_venue", "meta")
            }
        }

    def to_toml(self) -> str:
        """The effective settings as a TOML file (`mdpipe settings > mdpipe.toml` keeps them);
        each key under a comment with its description."""
        lines = [
            f"# settings_id = {self.settings_id}  (hash of [features] and [detectors])",
            f"# loaded from: {self.source or 'defaults (no file)'}",
        ]
        for name in SECTIONS:
            lines += ["", f"[{name}]"]
            for key, value in self.section(name).items():
                lines.append(f"# {FIELDS[name][key].description}")
                lines.append(
                    f"# {key} =   (unset)" if value is None else f"{key} = {_toml_value(value)}"
                )
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


# ---- loading --------------------------------------------------------------------------------


@dataclass
class _Value:
    value: Any
    origin: str  # where it was set: a file, an environment variable, `--set`


def find_config(
    config: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The settings file: `config`, else `$MDPIPE_CONFIG`, else `./mdpipe.toml` if present."""
    env = os.environ if environ is None else environ
    if config:
        path = Path(config)
        if not path.is_file():
            raise SettingsError(f"settings file {str(path)!r} (--config) does not exist")
        return path
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise SettingsError(f"settings file {str(path)!r} (${CONFIG_ENV}) does not exist")
        return path
    path = Path(cwd or Path.cwd()) / DEFAULT_FILE
    return path if path.is_file() else None


def _file_layer(path: Path) -> dict[str, dict[str, _Value]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from None
    known = ", ".join(f"[{s}]" for s in SECTIONS)
    out: dict[str, dict[str, _Value]] = {}
    for section, table in data.items():
        if section not in SECTIONS:
            if not isinstance(table, dict):
                owners = [s for s in SECTIONS if section in FIELDS[s]]
                hint = f" (it belongs under [{owners[0]}])" if len(owners) == 1 else ""
                raise SettingsError(
                    f"{path}: key {section!r} is outside any section{hint}; "
                    f"the known sections are {known}"
                )
            raise SettingsError(
                f"{path}: unknown section [{section}]{_close(section, list(SECTIONS))}; "
                f"the known sections are {known}"
            )
        if not isinstance(table, dict):
            raise SettingsError(f"{path}: {section} must be a table ([{section}]), got {table!r}")
        layer = out.setdefault(section, {})
        for key, value in table.items():
            info = _info(section, key, f"{path} [{section}]")
            try:
                layer[key] = _Value(convert(info, value, text=False), str(path))
            except ValueError as e:
                raise SettingsError(f"{path} [{section}] {key}: {e}") from None
    return out


def _info(section: str, key: str, where: str) -> FieldInfo:
    fields_ = FIELDS[section]
    if key not in fields_:
        raise SettingsError(
            f"{where}: unknown key {key!r}{_close(key, list(fields_))}; "
            f"the known keys are {', '.join(fields_)}"
        )
    return fields_[key]


# variables under a section's prefix that are not settings: secrets, kept out of the model so
# `mdpipe settings` never prints them
SECRET_ENV = frozenset({"MDPIPE_API_TOKEN"})


def _env_layer(environ: Mapping[str, str]) -> dict[str, dict[str, _Value]]:
    out: dict[str, dict[str, _Value]] = {}
    if environ.get("MDPIPE_LAKE"):
        out.setdefault("capture", {})["lake"] = _Value(environ["MDPIPE_LAKE"], "$MDPIPE_LAKE")
    for var, raw in environ.items():
        if var in SECRET_ENV:
            continue
        for section in SECTIONS:
            prefix = f"MDPIPE_{section.upper()}_"
            if not var.startswith(prefix):
                continue
            info = _info(section, var[len(prefix) :].lower(), f"${var}")
            try:
                value = convert(info, raw, text=True)
            except ValueError as e:
                raise SettingsError(f"${var} ([{section}] {info.name}): {e}") from None
            out.setdefault(section, {})[info.name] = _Value(value, f"${var}")
    return out


def resolve_key(key: str) -> FieldInfo:
    """`section.name`, or a bare `name` that exactly one section has."""
    section, dot, name = key.strip().rpartition(".")
    if dot:
        if section not in SECTIONS:
            raise SettingsError(
                f"--set {key}: unknown section {section!r}{_close(section, list(SECTIONS))}; "
                f"the known sections are {', '.join(SECTIONS)}"
            )
        return _info(section, name, f"--set {key.strip()} [{section}]")
    owners = [s for s in SECTIONS if name in FIELDS[s]]
    if len(owners) == 1:
        return FIELDS[owners[0]][name]
    if owners:
        raise SettingsError(
            f"--set {name}: ambiguous, {name!r} is a key of several sections; write one of "
            + ", ".join(f"{s}.{name}" for s in owners)
        )
    every = [q for s in SECTIONS for q in FIELDS[s]]
    raise SettingsError(
        f"--set {name}: no section has a key {name!r}{_close(name, every)}; "
        "see `mdpipe settings` for every key"
    )


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, _Value]]:
    out: dict[str, dict[str, _Value]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects section.name=value, got {item!r}")
        info = resolve_key(key)
        try:
            value = convert(info, raw, text=True)
        except ValueError as e:
            raise SettingsError(f"--set {item} ([{info.section}] {info.name}): {e}") from None
        out.setdefault(info.section, {})[info.name] = _Value(value, "--set")
    return out


def _build(section: str, values: dict[str, _Value]) -> Any:
    cls = SECTIONS[section]
    kw = {k: v.value for k, v in values.items()}
    if section == "capture" and not kw.get("symbols"):
        kw["symbols"] = _PLACEHOLDER_SYMBOLS
    try:
        return cls(**kw)
    except ValueError as e:
        raise SettingsError(_blame(section, values, str(e))) from None


def _blame(section: str, values: dict[str, _Value], msg: str) -> str:
    """`<origin> [section] key: <the dataclass's message>` for the key the message is about."""
    low = msg.lower()
    found = []
    for key in values:
        for form in (key, key.replace("_", " ")):
            m = re.search(rf"(?<![a-z0-9_]){re.escape(form)}(?![a-z0-9_])", low)
            if m:
                found.append((m.start(), key))
                break
    if not found and len(values) == 1:
        found = [(0, next(iter(values)))]
    if not found:
        origins = sorted({v.origin for v in values.values()})
        return f"{' + '.join(origins) or 'defaults'} [{section}]: {msg}"
    key = min(found)[1]
    return f"{values[key].origin} [{section}] {key}: {msg}"


def load_settings(
    config: str | os.PathLike[str] | None = None,
    sets: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Effective settings: defaults < file < environment < `sets` (see the module docstring).
    Raises `SettingsError` naming the origin, section and key of the first bad value."""
    env = os.environ if environ is None else environ
    path = find_config(config, environ=env, cwd=cwd)
    layers = [_file_layer(path) if path else {}, _env_layer(env), parse_sets(sets)]
    merged: dict[str, dict[str, _Value]] = {s: {} for s in SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            merged[section].update(values)
    built = {s: _build(s, merged[s]) for s in SECTIONS if s != "capture"}
    _build("capture", merged["capture"])
    capture = types.MappingProxyType({k: v.value for k, v in merged["capture"].items()})
    return Settings(**built, capture=capture, source=str(path) if path else None)


def build_section(section: str, values: Mapping[str, Any], origin: str) -> Any:
    """A section's dataclass from plain values (Dagster run config), errors named by origin."""
    for key in values:
        _info(section, key, f"{origin} [{section}]")
    return _build(section, {k: _Value(v, origin) for k, v in values.items()})


# ---- argparse -------------------------------------------------------------------------------


def add_settings_args(p: argparse.ArgumentParser) -> None:
    """`--config FILE` and repeatable `--set section.name=value`."""
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help=f"settings file (default: ${CONFIG_ENV}, else ./{DEFAULT_FILE} if present)",
    )
    p.add_argument(
        "--set",
        dest="set",
        action="append",
        default=None,
        metavar="SECTION.NAME=VALUE",
        help="override one setting, e.g. --set detectors.drift_threshold=4 (the section may be "
        "left out when the name is unique); repeatable; `mdpipe settings` lists every key",
    )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    return load_settings(
        getattr(args, "config", None), getattr(args, "set", None) or (), environ=environ
    )


__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FILE",
    "FIELDS",
    "SECTIONS",
    "Settings",
    "SettingsError",
    "add_settings_args",
    "build_section",
    "find_config",
    "load_settings",
    "settings_from_args",
]
