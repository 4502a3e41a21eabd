"""Resources, bound once in `mdpipe.defs.build_defs`: the lake, and the settings sections.

The settings resources are generated from the settings model (`mdpipe.settings`), one per
section: `features` and `detectors` (taken by the `features`/`signals` step) and `backtest`
(taken by `labels`, `cv_folds` and `evaluation`). Every field of the section's dataclass becomes
a resource field with its type, its default (the dataclass default, or the value of the settings
file the code location found: `$MDPIPE_CONFIG`, else `./mdpipe.toml`) and its description (from
the dataclass docstring), so the Launchpad shows all of them. There is no hand-written copy to
fall out of step: a field added to `DetectorConfig` shows up here by itself. A value set once per
run reaches every asset that takes the resource:

    resources:
      detectors:
        config:
          drift_threshold: 4.0
      backtest:
        config:
          fee_rate: 0.0004

`mdpipe run --config F` passes every value of F's sections this way. Validation stays in the
dataclasses and runs when the resource is initialised, so a bad value fails the run before any
data is read, with the field, the value and the allowed range.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import dagster as dg
import pydantic

from mdpipe.lake import Lake

if TYPE_CHECKING:
    from mdpipe.settings import Settings

# the settings sections the pipeline's assets take, by resource key
PIPELINE_SECTIONS = ("features", "detectors", "backtest", "cross_venue", "meta")
_PY_TYPES: dict[str, Any] = {
    "float": float,
    "int": int,
    "bool": bool,
    "str": str,
    "list": list[str],
}


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake the assets read and write.

    `path` empty means `$MDPIPE_LAKE`, else `./lake` (the same rule as `mdpipe --lake`), resolved
    when a step runs, never at import, so one code location serves whichever lake the process
    is pointed at.
    """

    path: str = ""

    def get(self) -> Lake:
        return Lake.resolve(self.path or None)


class SettingsResource(dg.ConfigurableResource):
    """Base of the generated per-section resources: `get()` is the section's validated
    dataclass (`FeatureConfig`, `DetectorConfig`, `BacktestConfig`, ...)."""

    section: ClassVar[str] = ""

    def get(self) -> Any:
        from mdpipe.settings import build_section

        return build_section(self.section, self.model_dump(), "run config")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.get()


R = TypeVar("R", bound=SettingsResource)


def section_resource(
    section: str,
    settings: Settings | None = None,
    *,
    base: type[R] = SettingsResource,  # type: ignore[assignment]
) -> type[R]:
    """A `ConfigurableResource` class with one field per field of `section`, defaulting to
    `settings` (or the dataclass defaults)."""
    from mdpipe.settings import FIELDS, SECTIONS

    values = settings.section(section) if settings is not None else {}
    fields: dict[str, Any] = {}
    for name, info in FIELDS[section].items():
        typ = _PY_TYPES[info.kind]
        default = values.get(name, info.default)
        if isinstance(default, tuple):
            default = list(default)
        fields[name] = (
            typ | None if info.optional else typ,
            pydantic.Field(default=default, description=info.description),
        )
    cls_name = "".join(w.capitalize() for w in section.split("_")) + "Resource"
    model = pydantic.create_model(
        cls_name,
        __base__=base,
        __module__=__name__,
        __doc__=f"The [{section}] settings (`{SECTIONS[section].__name__}`): "
        + (SECTIONS[section].__doc__ or "").strip().split("\n")[0],
        **fields,
    )
    model.section = section
    return model


@functools.cache
def _default_classes() -> dict[str, type[SettingsResource]]:
    return {s: section_resource(s) for s in PIPELINE_SECTIONS}


def pipeline_resources(settings: Settings | None = None) -> dict[str, Any]:
    """The settings resources of the pipeline, configurable at launch, defaulting to
    `settings` (the discovered settings file) or to the dataclass defaults."""
    if settings is None:
        classes = _default_classes()
    else:
        classes = {s: section_resource(s, settings) for s in PIPELINE_SECTIONS}
    return {s: cls.configure_at_launch() for s, cls in classes.items()}


# Importable names (tests, scripts): the resources with the dataclass defaults.
FeaturesResource = _default_classes()["features"]
DetectorsResource = _default_classes()["detectors"]
BacktestResource = _default_classes()["backtest"]
CrossVenueResource = _default_classes()["cross_venue"]
