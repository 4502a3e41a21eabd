"""Synthetic markets for sweep tests: a random walk, or a walk whose mid follows the taker
order flow with a known delay (the planted edge: trade imbalance leads the mid)."""

from __future__ import annotations

import numpy as np
import polars as pl

from mdpipe.lake import Lake, day_start_ns

VENUE = "binance"
SYMBOL = "SYN/USDT"
MARKET = f"{VENUE}:SYN-USDT"
STEP_NS = 100_000_000  # one book event per 100 ms
TICK = 0.01
LEVELS = 5


def write_market(
    lake: Lake,
    *,
    edge: bool,
    days: int = 3,
    minutes: int = 40,
    seed: int = 0,
    delay_steps: int = 20,
    beta_bps: float = 0.06,
) -> list[str]:
    """Write `days` UTC days of `minutes` each (from midnight) of book and trades; returns the
    dates. With `edge`, the mid drifts by `beta_bps` x the order-flow state `delay_steps`
    events (2 s) earlier; the taker side leans with that state at once."""
    rng = np.random.default_rng(seed)
    dates = [f"2024-03-{10 + d:02d}" for d in range(days)]
    uid = 1
    tid = 1
    mid = 1000.0
    for date in dates:
        n = minutes * 600
        t0 = day_start_ns(date)
        ts = t0 + np.arange(n, dtype=np.int64) * STEP_NS
        flow = np.zeros(n)
        e = rng.normal(0, 0.1, n)
        for i in range(1, n):
            flow[i] = 0.995 * flow[i - 1] + e[i]
        drift = np.zeros(n)
        if edge:
            drift[delay_steps:] = beta_bps * flow[:-delay_steps]
        rets = (rng.normal(0, 0.3, n) + drift) * 1e-4
        mids = mid * np.exp(np.cumsum(rets))
        mid = float(mids[-1])
        bid0 = np.floor(mids / TICK) * TICK
        book: dict[str, list] = {k: [] for k in ("exch_ts_ns", "update_id", "side", "price",
                                                  "qty", "is_snapshot")}  # fmt: skip
        prev: dict[str, set[float]] = {"bid": set(), "ask": set()}
        qty = rng.lognormal(0, 0.5, (n, 2, LEVELS))
        for i in range(n):
            snap = i == 0
            for s, side in enumerate(("bid", "ask")):
                lv = [round(bid0[i] - k * TICK, 2) if side == "bid" else
                      round(bid0[i] + (k + 1) * TICK, 2) for k in range(LEVELS)]  # fmt: skip
                if not snap:
                    for p in sorted(prev[side] - set(lv)):
                        for c, v in zip(book, (ts[i], uid, side, p, 0.0, False), strict=True):
                            book[c].append(v)
                for k, p in enumerate(lv):
                    for c, v in zip(book, (ts[i], uid, side, p, float(qty[i, s, k]), snap),
                                    strict=True):  # fmt: skip
                        book[c].append(v)
                prev[side] = set(lv)
            uid += 1
        # trades: Poisson(0.6) per step, taker side leaning with the flow
        k = rng.poisson(0.6, n)
        idx = np.repeat(np.arange(n), k)
        m = idx.size
        buy = rng.random(m) < 1 / (1 + np.exp(-2.0 * flow[idx]))
        within = (rng.random(m) * (STEP_NS - 2)).astype(np.int64) + 1
        tts = np.sort(ts[idx] + within)
        trades = pl.DataFrame(
            {
                "venue": VENUE,
                "symbol": SYMBOL,
                "exch_ts_ns": tts,
                "recv_ts_ns": tts + 5_000_000,
                "trade_id": np.arange(tid, tid + m, dtype=np.int64),
                "price": np.where(buy, bid0[idx] + TICK, bid0[idx]),
                "qty": rng.lognormal(0, 0.7, m),
                "side": np.where(buy, "buy", "sell"),
            }
        )
        tid += m
        bk = pl.DataFrame(book).with_columns(
            venue=pl.lit(VENUE), symbol=pl.lit(SYMBOL),
            recv_ts_ns=pl.col("exch_ts_ns") + 5_000_000,
        )  # fmt: skip
        lake.publish("book", VENUE, SYMBOL, date, bk)
        lake.publish("trades", VENUE, SYMBOL, date, trades)
    return dates


# Backtest settings that suit the synthetic scale (basis-point moves, no costs).
BASE_SETS = (
    "backtest.fee_rate=0",
    "backtest.slippage_bps=0",
    "backtest.profit_target_pct=0.0006",
    "backtest.stop_loss_pct=0.0006",
    "backtest.max_holding_seconds=60",
    "backtest.cv_n_folds=4",
    "backtest.embargo_seconds=60",
    "backtest.threshold_min_signals=3",
    "detectors.cooldown_seconds=5",
)
