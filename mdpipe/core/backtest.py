"""Event-driven tick backtester over signals: one position per market at a time.

The loop walks the book events (rows sharing a timestamp form one event) and applies, in this
order at each event time `t`:

1. time exit: an open position whose deadline (entry time + `max_holding_seconds`) is before
   `t` is closed at the book state at the deadline (the previous event), like a timer firing;
2. barrier exit: otherwise the mid of this event is checked against the profit and stop
   barriers (both in one event: the stop wins), and a touch closes at this event's book;
3. entry: when flat, the earliest signal not yet consumed with `signal_ts < t` that arrived
   while flat (`signal_ts >= time of the last exit`) opens a position at this event, i.e. the
   first book event strictly after the signal. Signals arriving while a position or an entry
   is pending are skipped (counted in `n_skipped`).

Prices, barriers and costs are exactly those of `mdpipe.core.labels` (entry at ask/bid with
slippage, exit at bid/ask with slippage, taker fee on both legs), so a trade's return equals
the label of the signal that opened it (tested). Sizing: each trade commits
`position_fraction` of the equity at entry. Equity is marked to market at every event at its
liquidation value (exit costs included). A position still open when the data ends before its
deadline is closed at the last book and flagged `censored`.

With `barrier_price='trade'` the barriers are touched by trade prices instead of mids, with
the labels' rules: trades after the entry event up to the deadline, a touch exits at the book
state at or before the touching trade (trades stamped at a book event's time see that event's
book), and the stop wins inside one timestamp.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numba
import numpy as np
import numpy.typing as npt
import polars as pl

from mdpipe.core.config import BacktestConfig
from mdpipe.core.labels import (
    BARRIER_NAMES,
    BARRIER_TIME,
    PricePath,
    TradePath,
    touch_fold,
)

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

SECONDS_PER_YEAR = 365.0 * 86_400.0  # crypto spot trades every day of the year

TRADES_SCHEMA: dict[str, pl.DataType] = {
    "signal_id": pl.String(),
    "signal_ts_ns": pl.Int64(),
    "direction": pl.Int8(),
    "entry_ts_ns": pl.Int64(),
    "exit_ts_ns": pl.Int64(),
    "t_end_ns": pl.Int64(),
    "entry_price": pl.Float64(),
    "exit_price": pl.Float64(),
    "qty": pl.Float64(),
    "pnl": pl.Float64(),
    "ret": pl.Float64(),
    "barrier": pl.String(),
    "censored": pl.Boolean(),
    "equity_after": pl.Float64(),
}


@numba.njit(cache=True)
def _close(
    tr_i: I64Array,
    tr_f: F64Array,
    nt: int,
    sig: int,
    entry_idx: int,
    x: int,
    t_end: int,
    barrier: int,
    censored: int,
    side: int,
    qty: float,
    entry_px: float,
    bid: F64Array,
    ask: F64Array,
    slip: float,
    fee: float,
    cash: float,
) -> float:
    """Close the position at the book state `x` (long sells at bid, short buys at ask, with
    slippage and the fee on both legs), record trade `nt`, return the cash after it."""
    xp = bid[x] * (1.0 - slip) if side > 0 else ask[x] * (1.0 + slip)
    pnl = side * qty * (xp - entry_px) - fee * qty * (entry_px + xp)
    cash += pnl
    tr_i[nt, 0] = sig
    tr_i[nt, 1] = entry_idx
    tr_i[nt, 2] = x
    tr_i[nt, 3] = t_end
    tr_i[nt, 4] = barrier
    tr_i[nt, 5] = censored
    tr_f[nt, 0] = entry_px
    tr_f[nt, 1] = xp
    tr_f[nt, 2] = qty
    tr_f[nt, 3] = pnl
    tr_f[nt, 4] = cash
    return cash


@numba.njit(cache=True)
def _backtest_kernel(
    ts: I64Array,
    bid: F64Array,
    ask: F64Array,
    mid: F64Array,
    end_ns: int,
    sig_ts: I64Array,
    sig_side: I64Array,
    horizon_ns: int,
    pt: float,
    sl: float,
    slip: float,
    fee: float,
    capital: float,
    fraction: float,
    use_trades: bool,
    trade_ts: I64Array,
    trade_px: F64Array,
) -> tuple[I64Array, F64Array, I64Array, I64Array, F64Array, F64Array]:
    n = ts.shape[0]
    m = sig_ts.shape[0]
    nq = trade_ts.shape[0]
    q = 0  # next trade (trade mode): trades up to the current book event are consumed in order
    # per event-group outputs
    eq_idx = np.empty(n, np.int64)
    equity = np.empty(n, np.float64)
    pos_out = np.empty(n, np.int64)
    # per trade: signal, entry idx, exit idx, t_end, barrier, censored
    tr_i = np.empty((m, 6), np.int64)
    tr_f = np.empty((m, 5), np.float64)  # entry_px, exit_px, qty, pnl, equity_after
    nt = 0
    ng = 0
    cash = capital
    side = 0
    qty = 0.0
    entry_px = 0.0
    m0 = 0.0
    deadline = 0
    cur_sig = -1
    entry_idx = -1
    last_exit_t = np.iinfo(np.int64).min
    p = 0
    prev_state = -1
    j = 0
    while j < n:
        tj = ts[j]
        k = j
        while k < n and ts[k] == tj:
            k += 1
        state = k - 1
        # at most one exit per event: its book state, its t_end and its barrier
        x_close = -1
        t_close = 0
        b_close = BARRIER_TIME
        # 0. (trade mode) trades strictly between the previous book event and this one: a touch
        #    exits at the book state at or before it, i.e. the previous event
        while use_trades and q < nq and trade_ts[q] < tj:
            tq = trade_ts[q]
            touch = -1
            while q < nq and trade_ts[q] == tq:
                if side != 0:
                    touch = touch_fold(touch, side * (trade_px[q] / m0 - 1.0), pt, sl)
                q += 1
            if side != 0 and x_close < 0 and tq <= deadline and touch >= 0:
                x_close, t_close, b_close = prev_state, tq, touch
        # 1. time exit at the deadline's book state (the previous event)
        if side != 0 and x_close < 0 and tj > deadline:
            x_close, t_close, b_close = prev_state, deadline, BARRIER_TIME
        # 2. barrier exit on this event's mids (trade mode: trades stamped at this event's time;
        #    they are consumed even when flat, so an entry here never sees them)
        touch = -1
        if use_trades:
            while q < nq and trade_ts[q] == tj:
                if side != 0:
                    touch = touch_fold(touch, side * (trade_px[q] / m0 - 1.0), pt, sl)
                q += 1
        elif side != 0 and x_close < 0:
            for c in range(j, k):
                touch = touch_fold(touch, side * (mid[c] / m0 - 1.0), pt, sl)
        exited_here = False
        if side != 0 and x_close < 0 and touch >= 0:
            x_close, t_close, b_close = state, tj, touch
            exited_here = True
        if x_close >= 0:
            cash = _close(
                tr_i, tr_f, nt, cur_sig, entry_idx, x_close, t_close, b_close, 0,
                side, qty, entry_px, bid, ask, slip, fee, cash,
            )  # fmt: skip
            nt += 1
            side = 0
            last_exit_t = t_close
        # 3. entry at the first event strictly after a signal that arrived while flat
        if side == 0:
            while p < m and sig_ts[p] < last_exit_t:
                p += 1
            if p < m and sig_ts[p] < tj and not exited_here:
                cur_sig = p
                side = sig_side[p]
                entry_idx = state
                m0 = mid[state]
                entry_px = ask[state] * (1.0 + slip) if side > 0 else bid[state] * (1.0 - slip)
                qty = fraction * cash / entry_px
                deadline = tj + horizon_ns
                while p < m and sig_ts[p] < tj:
                    p += 1
                # signals before the entry event were pending with this one: consumed
                last_exit_t = tj
        # mark to market at liquidation value
        if side != 0:
            xp = bid[state] * (1.0 - slip) if side > 0 else ask[state] * (1.0 + slip)
            equity[ng] = cash + side * qty * (xp - entry_px) - fee * qty * (entry_px + xp)
        else:
            equity[ng] = cash
        eq_idx[ng] = state
        pos_out[ng] = side
        ng += 1
        prev_state = state
        j = k
    # end of data with an open position: (trade mode) prints after the last book event up to
    # the deadline may still touch; otherwise closed at the last book, censored when the
    # deadline lies after the known data (a deadline inside it: the last event is its state)
    if side != 0:
        t_close, b_close = deadline, BARRIER_TIME
        censored = 0 if deadline <= end_ns else 1
        while use_trades and q < nq and trade_ts[q] <= deadline:
            tq = trade_ts[q]
            touch = -1
            while q < nq and trade_ts[q] == tq:
                touch = touch_fold(touch, side * (trade_px[q] / m0 - 1.0), pt, sl)
                q += 1
            if touch >= 0:
                t_close, b_close, censored = tq, touch, 0
                break
        cash = _close(
            tr_i, tr_f, nt, cur_sig, entry_idx, n - 1, t_close, b_close, censored,
            side, qty, entry_px, bid, ask, slip, fee, cash,
        )  # fmt: skip
        nt += 1
    return eq_idx[:ng], equity[:ng], pos_out[:ng], tr_i[:nt], tr_f[:nt].copy(), np.array([cash])


@dataclass(frozen=True)
class BacktestResult:
    trades: pl.DataFrame  # TRADES_SCHEMA
    equity: pl.DataFrame  # ts_ns, equity, position (one row per book event time)
    summary: dict[str, float] = field(default_factory=dict)


def sharpe_ratio(ts_ns: npt.ArrayLike, equity: npt.ArrayLike, *, interval_ns: int) -> float:
    """Annualised Sharpe of an equity curve: equity sampled every `interval_ns` (last value at
    or before each sample time), simple returns per interval, mean / std (ddof=1) times
    sqrt(seconds per 365-day year / interval seconds); no risk-free rate (intraday). NaN with
    fewer than two returns or zero variance."""
    t = np.asarray(ts_ns, dtype=np.int64)
    e = np.asarray(equity, dtype=np.float64)
    if t.size < 2 or interval_ns <= 0:
        return math.nan
    grid = np.arange(t[0], t[-1] + 1, interval_ns, dtype=np.int64)
    if grid[-1] != t[-1]:
        grid = np.r_[grid, t[-1]]
    sampled = e[np.searchsorted(t, grid, side="right") - 1]
    rets = np.diff(sampled) / sampled[:-1]
    if rets.size < 2:
        return math.nan
    sd = float(np.std(rets, ddof=1))
    if not sd > 0:
        return math.nan
    return float(np.mean(rets) / sd * math.sqrt(SECONDS_PER_YEAR / (interval_ns / 1e9)))


def max_drawdown(equity: npt.ArrayLike) -> float:
    """Largest peak-to-trough fall as a fraction of the peak (0.05 = 5 %); 0 when none."""
    e = np.asarray(equity, dtype=np.float64)
    if e.size == 0:
        return math.nan
    peak = np.maximum.accumulate(e)
    return float(np.max((peak - e) / peak))


def backtest(
    path: PricePath,
    signals: pl.DataFrame,
    config: BacktestConfig,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    profit_target_pct: float | None = None,
    stop_loss_pct: float | None = None,
    max_holding_ns: int | None = None,
    equity_points: int | None = 5_000,
    trades: TradePath | None = None,
) -> BacktestResult:
    """Run the signals (`ts_ns, direction`, optional `signal_id`) through the book `path`
    (with `config.barrier_price='trade'`, barriers are touched by the prices in `trades`).

    `start_ns` / `end_ns` restrict the Sharpe sampling and the exposure to a window (e.g. a
    test fold's span) so that flat time outside it does not dilute them; trades always run on
    the whole path (a label may end after the window). The barrier overrides exist for the always-in-the-market baseline. Summary
    keys: net_pnl, net_return, n_trades, n_skipped, win_rate, sharpe, max_drawdown, exposure
    (share of equity samples with a position), final_equity; they are computed on the full
    per-event equity curve. The returned `equity` frame is thinned to about
    2 x `equity_points` rows by min/max decimation (it is for plots; None keeps every event).
    """
    use_trades = config.barrier_price == "trade"
    if use_trades and trades is None:
        raise ValueError("barrier_price='trade' needs a TradePath (trades=...)")
    tr = trades or TradePath(np.zeros(0, np.int64), np.zeros(0, np.float64))
    sig = signals.sort("ts_ns", maintain_order=True)
    sig_ts = np.ascontiguousarray(sig["ts_ns"].to_numpy().astype(np.int64))
    sig_side = np.ascontiguousarray(sig["direction"].to_numpy().astype(np.int64))
    if sig_side.size and not np.all(np.abs(sig_side) == 1):
        raise ValueError("direction must be +1 or -1")
    ids = (
        sig["signal_id"].cast(pl.String).to_list()
        if "signal_id" in sig.columns
        else [str(i) for i in range(sig.height)]
    )
    ts, bid, ask, mid = path.ts_ns, path.bid, path.ask, path.mid
    eq_idx, equity, pos, tr_i, tr_f, _ = _backtest_kernel(
        np.ascontiguousarray(ts),
        np.ascontiguousarray(bid),
        np.ascontiguousarray(ask),
        np.ascontiguousarray(mid),
        int(path.end_ns),
        sig_ts,
        sig_side,
        int(config.max_holding_ns if max_holding_ns is None else max_holding_ns),
        float(config.profit_target_pct if profit_target_pct is None else profit_target_pct),
        float(config.stop_loss_pct if stop_loss_pct is None else stop_loss_pct),
        float(config.slippage),
        float(config.fee_rate),
        float(config.initial_capital),
        float(config.position_fraction),
        use_trades,
        tr.ts_ns,
        tr.price,
    )
    if tr_i.shape[0]:
        si = tr_i[:, 0]
        entry_px, exit_px, qty, pnl, eq_after = (tr_f[:, c] for c in range(5))
        done = pl.DataFrame(
            {
                "signal_id": pl.Series([ids[i] for i in si.tolist()], dtype=pl.String),
                "signal_ts_ns": pl.Series(sig_ts[si], dtype=pl.Int64),
                "direction": pl.Series(sig_side[si], dtype=pl.Int8),
                "entry_ts_ns": pl.Series(ts[tr_i[:, 1]], dtype=pl.Int64),
                "exit_ts_ns": pl.Series(ts[tr_i[:, 2]], dtype=pl.Int64),
                "t_end_ns": pl.Series(tr_i[:, 3], dtype=pl.Int64),
                "entry_price": entry_px,
                "exit_price": exit_px,
                "qty": qty,
                "pnl": pnl,
                "ret": pnl / (qty * entry_px),
                "barrier": pl.Series(np.asarray(BARRIER_NAMES)[tr_i[:, 4]], dtype=pl.String),
                "censored": pl.Series(tr_i[:, 5].astype(bool)),
                "equity_after": eq_after,
            }
        )
    else:
        done = pl.DataFrame(schema=TRADES_SCHEMA)
    cap = config.initial_capital
    ets = ts[eq_idx]
    w_lo = 0 if start_ns is None else int(np.searchsorted(ets, start_ns, side="left"))
    w_hi = ets.size if end_ns is None else int(np.searchsorted(ets, end_ns, side="right"))
    w_eq, w_pos, w_ts = equity[w_lo:w_hi], pos[w_lo:w_hi], ets[w_lo:w_hi]
    final = float(equity[-1]) if equity.size else cap
    wins = done.filter(pl.col("pnl") > 0).height
    summary = {
        "net_pnl": final - cap,
        "net_return": final / cap - 1.0,
        "n_trades": float(done.height),
        "n_skipped": float(sig.height - done.height),
        "win_rate": wins / done.height if done.height else math.nan,
        "sharpe": sharpe_ratio(w_ts, w_eq, interval_ns=round(config.sharpe_interval_seconds * 1e9)),
        "max_drawdown": max_drawdown(equity) if equity.size else math.nan,
        "exposure": float(np.mean(w_pos != 0)) if w_pos.size else math.nan,
        "final_equity": final,
    }
    keep = (
        slice(None)
        if equity_points is None or equity.size <= 2 * equity_points
        else minmax_decimate(equity, equity_points)
    )
    eq = pl.DataFrame(
        {
            "ts_ns": pl.Series(ets[keep], dtype=pl.Int64),
            "equity": pl.Series(equity[keep], dtype=pl.Float64),
            "position": pl.Series(pos[keep], dtype=pl.Int8),
        }
    )
    return BacktestResult(trades=done, equity=eq, summary=summary)


def minmax_decimate(values: npt.ArrayLike, n_buckets: int) -> I64Array:
    """Sorted indices keeping the first, the last, and each bucket's minimum and maximum, so a
    plot of a long curve keeps its peaks and troughs (drawdowns stay visible)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    size = -(-n // n_buckets)
    pad = size * n_buckets - n
    vv = np.r_[v, np.full(pad, np.nan)].reshape(n_buckets, size)
    base = np.arange(n_buckets) * size
    lo = base + np.nanargmin(np.where(np.isnan(vv), np.inf, vv), axis=1)
    hi = base + np.nanargmax(np.where(np.isnan(vv), -np.inf, vv), axis=1)
    idx = np.unique(np.r_[0, lo, hi, n - 1])
    return idx[idx < n].astype(np.int64)


def buy_and_hold(path: PricePath, config: BacktestConfig) -> BacktestResult:
    """The always-in-the-market baseline: long from the first book event to the last one, same
    costs and sizing as the strategy (one round trip)."""
    if len(path) < 2:
        raise ValueError("buy_and_hold needs at least two book events")
    t0 = int(path.ts_ns[0])
    sig = pl.DataFrame({"ts_ns": [t0 - 1], "direction": [1], "signal_id": ["always_in"]})
    return backtest(
        path,
        sig,
        dataclasses.replace(config, barrier_price="mid"),  # no barriers: no touch price needed
        profit_target_pct=math.inf,
        stop_loss_pct=math.inf,
        max_holding_ns=int(path.ts_ns[-1]) - t0,
    )
