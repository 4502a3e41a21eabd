"""Cross-venue speed: lead_lag for one day-pair of ~1M mid changes a venue (target: 60 s on
one core) and the online cross-venue update per event (target: median <= 20 us).

    .venv/bin/python bench/crossvenue.py [--changes 1000000]

Baselines in the same run: one numpy pass over the same arrays (np.diff + a dot product) for
lead_lag, and a bare Python call of a no-op for the online step; the previous null (one
pointer walk per draw, `hy_corr_lags` per shuffled series) is timed in the same run too.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mdpipe.core.crossvenue import (
    CrossVenueConfig,
    CrossVenueEngine,
    Pair,
    hy_corr_lags,
    lead_lag,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=1_000_000)
    ap.add_argument("--online-events", type=int, default=200_000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n = a.changes
    t0 = 1_723_161_600_000_000_000
    ta = t0 + np.cumsum(rng.integers(1, 170, n)).astype(np.int64) * 1_000_000 // 2
    tb = t0 + np.cumsum(rng.integers(1, 170, n)).astype(np.int64) * 1_000_000 // 2
    xa = np.cumsum(rng.normal(0, 1e-4, n))
    xb = np.interp(tb - 150_000_000, ta, xa) + rng.normal(0, 2e-5, n)
    cfg = CrossVenueConfig()
    lags = cfg.lags_ns
    hy_corr_lags(ta[:100], xa[:100], tb[:100], xb[:100], lags[:2])  # compile
    lead_lag(ta[:1000], np.exp(xa[:1000]), tb[:1000], np.exp(xb[:1000]), cfg)
    s = time.perf_counter()
    np.dot(np.diff(xa), np.diff(xa)) + np.dot(np.diff(xb), np.diff(xb))
    base = time.perf_counter() - s
    s = time.perf_counter()
    hy_corr_lags(ta, xa, tb, xb, lags)
    curve = time.perf_counter() - s
    s = time.perf_counter()
    ll = lead_lag(ta, np.exp(xa), tb, np.exp(xb), cfg)
    full = time.perf_counter() - s
    # the previous null: one full pointer walk per draw and lag (21 curves one by one)
    s = time.perf_counter()
    pr = np.random.default_rng(cfg.seed)
    xl = np.log(np.exp(xb))
    dl = np.diff(xl)
    for _ in range(cfg.null_shuffles):
        xs = np.concatenate([[xl[0]], xl[0] + np.cumsum(pr.permutation(dl))])
        hy_corr_lags(ta, xa, tb, xs, lags)
    old = curve + time.perf_counter() - s
    print(f"lead_lag, {n:,} changes a venue, {len(lags)} lags, {cfg.null_shuffles} null draws")
    print(f"  numpy one-pass baseline     {base * 1e3:9.1f} ms")
    print(f"  HY curve (81 lags)          {curve:9.2f} s   {curve / base:8.0f}x baseline")
    print(f"  lead_lag with null band     {full:9.2f} s   {full / base:8.0f}x baseline"
          f"   (lead {ll.max_lag_ns / 1e6:+.0f} ms, p {ll.p_value:.3f})")  # fmt: skip
    print(f"  previous: a walk per draw   {old:9.2f} s   {old / base:8.0f}x baseline"
          f"   (the shared walk: {old / full:.1f}x faster)")  # fmt: skip

    m = a.online_events
    pair = Pair("X", "va", "X/USDT", "vb", "X/USDT:USDT")
    eng = CrossVenueEngine(pair, cfg, settings_id="b", leader=0, lead_window_ns=150_000_000)
    ts = np.sort(np.concatenate([ta[: m // 2], tb[: m // 2]]))
    side = rng.integers(0, 2, m)
    mids = 100 * np.exp(np.concatenate([xa[: m // 2], xb[: m // 2]]))
    per = np.empty(m)
    clock = time.perf_counter_ns
    for i in range(m):
        t = int(ts[i])
        mid = float(mids[i])
        s_ns = clock()
        eng.on_row(int(side[i]), t, t, mid, mid - 0.005, mid + 0.005, 1.0, i)
        per[i] = clock() - s_ns

    def noop(*args: object) -> None:
        return None

    nb = np.empty(m)
    for i in range(m):
        s_ns = clock()
        noop(0, 1, 2, 3.0, 4.0, 5.0, 6.0, 7)
        nb[i] = clock() - s_ns
    med, p99 = np.median(per) / 1e3, np.percentile(per, 99) / 1e3
    print(f"online CrossVenueEngine.on_row, {m:,} events")
    print(f"  median {med:6.2f} us   p99 {p99:6.2f} us   "
          f"({np.median(per) / np.median(nb):.0f}x a no-op Python call, {np.median(nb):.0f} ns)")  # fmt: skip


if __name__ == "__main__":
    main()
