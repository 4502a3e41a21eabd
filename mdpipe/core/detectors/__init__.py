"""Online detectors (numba step kernels shared by the batch and the online drivers)."""

from mdpipe.core.detectors.bocpd import Bocpd, bocpd_exact
from mdpipe.core.detectors.cusum import Cusum, CusumState, siegmund_arl
from mdpipe.core.detectors.ensemble import (
    DET_INPUTS,
    SIGNAL_TYPES,
    DetectorConfig,
    MicrostructureDetector,
    Signal,
    signal_id,
)

__all__ = [
    "DET_INPUTS",
    "SIGNAL_TYPES",
    "Bocpd",
    "Cusum",
    "CusumState",
    "DetectorConfig",
    "MicrostructureDetector",
    "Signal",
    "bocpd_exact",
    "siegmund_arl",
    "signal_id",
]
