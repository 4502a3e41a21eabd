"""The Dagster code location (`dagster dev` in the project root loads this module)."""

from mdpipe.defs import build_defs

defs = build_defs()
