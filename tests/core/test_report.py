"""HTML report: one self-contained file with every plot embedded, PNGs next to it."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import polars as pl

from mdpipe.core.config import BacktestConfig
from mdpipe.core.cv import make_cv_folds
from mdpipe.core.labels import PricePath, make_labels
from mdpipe.core.metrics import evaluate
from mdpipe.core.report import PLOT_NAMES, render_report, side_by_side
from mdpipe.lake import TMP_PREFIX
from mdpipe.pipeline.reports import write_report, write_summary_report

S = 1_000_000_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_evaluation(seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    n = 1500
    ts = np.cumsum(rng.integers(1, 4, n)) * S // 2
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
    path = PricePath.from_arrays(ts, mid - 0.01, mid + 0.01, mid)
    k = 60
    sig = pl.DataFrame(
        {
            "ts_ns": np.sort(rng.integers(int(ts[0]), int(ts[-1]), k)),
            "signal_id": [f"s{i}" for i in range(k)],
            "signal_type": ["cusum"] * 30 + ["bocpd"] * 30,
            "direction": np.where(rng.random(k) < 0.5, 1, -1),
            "score": rng.random(k),
        }
    )
    cfg = BacktestConfig(
        profit_target_pct=0.002,
        stop_loss_pct=0.002,
        max_holding_seconds=30.0,
        grid_seconds=10.0,
        fee_rate=0.0,
        slippage_bps=0.0,
        cv_n_folds=3,
        threshold_min_signals=2,
    )
    labels = make_labels(sig, path, cfg)
    ev = evaluate(labels, make_cv_folds(labels, cfg), path, cfg, partition="2024-08-08|x")
    return ev, path


def embedded_pngs(text: str) -> dict[str, bytes]:
    out = {}
    for name, b64 in re.findall(
        r'<figure id="fig-([a-z_]+)"><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
        text,
    ):
        out[name] = base64.b64decode(b64)
    return out


def test_report_embeds_every_plot_and_writes_pngs(tmp_path: Path) -> None:
    ev, path = small_evaluation()
    gaps = pl.DataFrame({"ts_ns": [int(path.ts_ns[100])], "kind": ["sequence_gap"]})
    offsets = pl.DataFrame({"ts_ns": path.ts_ns[::50], "offset_ms": np.full(30, 1270.0)})
    out = write_report(ev, path, tmp_path / "r", title="X <test>", gaps=gaps, clock_offsets=offsets)
    text = out.read_text(encoding="utf-8")
    pngs = embedded_pngs(text)
    assert set(pngs) == set(PLOT_NAMES)
    for name, data in pngs.items():
        assert data.startswith(PNG_MAGIC)
        # the PNG next to the report is the same image
        assert (tmp_path / "r" / f"{name}.png").read_bytes() == data
    # offline: no scripts, no external references; the title is escaped
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "X &lt;test&gt;" in text
    for heading in ("In-sample vs out-of-sample", "Per detector", "Data quality", "All metrics"):
        assert heading in text
    assert "sequence_gap" in text and "1270.0" in text
    assert "cusum" in text and "bocpd" in text


def test_rendering_is_pure_and_publishing_leaves_no_temporary_files(tmp_path: Path) -> None:
    ev, path = small_evaluation()
    files = render_report(ev, path, file_name="r.html")
    assert list(files) == [f"{n}.png" for n in PLOT_NAMES] + ["r.html"]
    pngs = embedded_pngs(files["r.html"].decode("utf-8"))
    assert all(files[f"{n}.png"] == pngs[n] for n in PLOT_NAMES)
    out = write_report(ev, path, tmp_path / "r", file_name="r.html")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(files)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_report_without_optional_inputs_still_has_every_plot(tmp_path: Path) -> None:
    ev, path = small_evaluation(1)
    out = write_report(ev, path, tmp_path, file_name="p.html")
    assert set(embedded_pngs(out.read_text())) == set(PLOT_NAMES)
    assert "not supplied" in out.read_text()


def test_side_by_side_has_is_and_oos_columns() -> None:
    ev, _ = small_evaluation()
    table = side_by_side(ev.metrics)
    assert {"fold 0 IS", "fold 0 OOS", "all OOS", "all full"} <= set(table.columns)
    assert "precision" in table["metric"].to_list()


def test_summary_report(tmp_path: Path) -> None:
    ev_a, _ = small_evaluation(2)
    ev_b, _ = small_evaluation(3)
    metrics = pl.concat(
        [ev_a.metrics, ev_b.metrics.with_columns(pl.lit("2024-08-09|x").alias("partition"))],
        how="diagonal_relaxed",
    )
    out = write_summary_report(
        metrics, tmp_path, report_links={"2024-08-08|x": "a/report.html", "2024-08-09|x": "b.html"}
    )
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 1
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG_MAGIC)
    assert 'href="a/report.html"' in text and "2024-08-09|x" in text
    assert "detector_precision" in text and "random_net_pnl" in text
