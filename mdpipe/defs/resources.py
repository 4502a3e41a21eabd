"""Resources: the lake, bound once in `mdpipe.defs.build_defs`."""

from __future__ import annotations

import dagster as dg

from mdpipe.lake import Lake


class LakeResource(dg.ConfigurableResource):
    """The Parquet lake the assets read and write.

    `path` empty means `$MDPIPE_LAKE`, else `./lake` (the same rule as `mdpipe --lake`), resolved
    when a step runs, never at import, so one code location serves whichever lake the process
    is pointed at.
    """

    path: str = ""

    def get(self) -> Lake:
        return Lake.resolve(self.path or None)
