"""`detect_on_features` (sweeps vary detector settings without recomputing features) gives the
batch driver's signals bit for bit, on the bundled recording, for default and other settings."""

from __future__ import annotations

import dataclasses

import pytest

from mdpipe.core.batch import compute_features_and_signals, detect_on_features
from mdpipe.core.config import settings_id
from mdpipe.core.detectors.ensemble import DetectorConfig
from mdpipe.core.features import FeatureConfig
from mdpipe.lake import Lake


@pytest.mark.parametrize(
    "changes", [{}, {"drift_threshold": 2.0, "cooldown_seconds": 5.0, "dynamic_quantile": 0.8}]
)
def test_detectors_over_features_equal_the_batch_pass(
    lake_with_recordings: Lake, changes: dict[str, float]
) -> None:
    book = lake_with_recordings.read("book", "binance", "BTC/USDT", "2024-08-09")
    trades = lake_with_recordings.read("trades", "binance", "BTC/USDT", "2024-08-09")
    dcfg = dataclasses.replace(DetectorConfig(), **changes)
    feats, sigs = compute_features_and_signals(book, trades, detector_config=dcfg)
    assert sigs.height >= 3
    again = detect_on_features(
        feats,
        dcfg,
        settings_id=settings_id(FeatureConfig(), dcfg),
        venue="binance",
        symbol="BTC/USDT",
    )
    assert again.equals(sigs)
