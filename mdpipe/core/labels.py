"""Triple-barrier labels (López de Prado, *Advances in Financial Machine Learning*, 2018, ch. 3).

Rules, applied identically to signals and to the regular ROC grid:

- **Entry** at the first book event strictly after the signal time (never the event that
  produced the signal). Events sharing one timestamp are one event: the book state at a time is
  the state after the last row carrying that timestamp, so entry uses that row.
- **Side** from the signal's `direction` (+1 long, -1 short).
- **Barriers** relative to the entry mid `m0`, on the favourable move `r = side * (p / m0 - 1)`:
  profit when `r >= profit_target_pct`, stop when `r <= -stop_loss_pct`, time when
  `max_holding_seconds` pass without either. `p` is the book mid (default) or, with
  `barrier_price='trade'`, trade prices. Only events with `entry_ts < ts <= t_end` are looked
  at. If one event (one timestamp) touches both, the stop wins: the order inside a timestamp is
  not observable, so we assume the worst.
- **Exit** at the book state at the touch (mid mode: the touching event; trade mode: the last
  book event at or before the touching trade); for the time barrier, the book state at the
  deadline (the last event at or before it), and `t_end_ns` is the deadline itself.
- **Costs**: a long buys at best ask * (1 + slippage) and sells at best bid * (1 - slippage), a
  short the reverse, so the half spread recorded at entry and at exit is paid; the taker fee is
  charged on both legs. `ret = side * (exit_px - entry_px) / entry_px
  - fee_rate * (entry_px + exit_px) / entry_px`, i.e. net PnL over the entry notional.
- **Label** +1 for profit, -1 for stop, 0 for time (the vertical barrier carries no direction
  by itself; its money outcome is in `ret`).
- **Censoring**: a label whose deadline lies after `PricePath.end_ns` (the time up to which the
  data is known complete) and that touched no barrier before the data end is `censored = True`,
  barrier 'time', label 0, `t_end_ns` = the deadline it would have needed; its exit fields are
  the last known book (mark to market, informative only). A signal with no book event after it
  at all is censored with null entry and exit fields. Censored rows are excluded from metrics
  and from cross-validation.
- **Lead time to a move**: `move_ts_ns` is the first time in `(entry_ts, t_end]` at which the
  barrier price moved `move_bps` in the signal's favour (null if it did not).

Grid labels (for ROC, recall, false-positive rate): every `grid_seconds`, aligned to multiples
of the grid since the epoch so partitions and reruns share grid points, inside the partition's
own time span; each grid time is labelled for **both** directions (two rows). A grid row is a
positive when a trade of that direction entered there would hit the profit barrier first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import numpy.typing as npt
import polars as pl

from mdpipe.core.config import BacktestConfig

BARRIER_NAMES = ("time", "profit", "stop")
BARRIER_TIME, BARRIER_PROFIT, BARRIER_STOP = 0, 1, 2

LABEL_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(),
    "signal_id": pl.String(),
    "signal_type": pl.String(),
    "ts_ns": pl.Int64(),
    "direction": pl.Int8(),
    "score": pl.Float64(),
    "entry_ts_ns": pl.Int64(),
    "entry_price": pl.Float64(),
    "entry_mid": pl.Float64(),
    "exit_ts_ns": pl.Int64(),
    "exit_price": pl.Float64(),
    "exit_mid": pl.Float64(),
    "t_end_ns": pl.Int64(),
    "barrier": pl.String(),
    "label": pl.Int8(),
    "ret": pl.Float64(),
    "gross_ret": pl.Float64(),
    "censored": pl.Boolean(),
    "move_ts_ns": pl.Int64(),
}

F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class PricePath:
    """A market's top of book, one row per book event, sorted by `ts_ns`.

    `end_ns` is the time up to which the data is known to be complete: labels whose deadline
    lies beyond it are censored. It defaults to the last event's time (conservative); the
    pipeline sets it to the end of the day when the partition is known to be complete, and
    `concat` moves it to the next partition's end.
    """

    ts_ns: I64Array
    bid: F64Array
    ask: F64Array
    mid: F64Array
    end_ns: int

    def __post_init__(self) -> None:
        n = len(self.ts_ns)
        if not (len(self.bid) == len(self.ask) == len(self.mid) == n):
            raise ValueError("PricePath arrays must have the same length")
        if n and np.any(np.diff(self.ts_ns) < 0):
            raise ValueError("PricePath.ts_ns must be sorted ascending")
        if n and self.end_ns < int(self.ts_ns[-1]):
            raise ValueError(
                f"PricePath.end_ns={self.end_ns} is before the last event {int(self.ts_ns[-1])}"
            )

    def __len__(self) -> int:
        return len(self.ts_ns)

    @classmethod
    def from_arrays(
        cls,
        ts_ns: npt.ArrayLike,
        bid: npt.ArrayLike,
        ask: npt.ArrayLike,
        mid: npt.ArrayLike | None = None,
        *,
        end_ns: int | None = None,
    ) -> PricePath:
        """Build from arrays, dropping rows whose book is not usable (non-finite, non-positive
        or crossed quotes: a crossed book is a data error, not a price anyone could trade)."""
        ts = np.asarray(ts_ns, dtype=np.int64)
        b = np.asarray(bid, dtype=np.float64)
        a = np.asarray(ask, dtype=np.float64)
        m = (b + a) / 2.0 if mid is None else np.asarray(mid, dtype=np.float64)
        ok = np.isfinite(b) & np.isfinite(a) & np.isfinite(m) & (b > 0) & (a >= b)
        if not ok.all():
            ts, b, a, m = ts[ok], b[ok], a[ok], m[ok]
        order = np.argsort(ts, kind="stable")
        if np.any(order != np.arange(len(ts))):
            ts, b, a, m = ts[order], b[order], a[order], m[order]
        last = int(ts[-1]) if len(ts) else 0
        end = last if end_ns is None else max(int(end_ns), last)
        return cls(
            np.ascontiguousarray(ts),
            np.ascontiguousarray(b),
            np.ascontiguousarray(a),
            np.ascontiguousarray(m),
            end,
        )

    @classmethod
    def from_frame(cls, features: pl.DataFrame, *, end_ns: int | None = None) -> PricePath:
        """From a `features` table (columns `ts_ns, best_bid, best_ask, mid`)."""
        missing = {"ts_ns", "best_bid", "best_ask", "mid"} - set(features.columns)
        if missing:
            raise ValueError(f"features frame lacks columns {sorted(missing)}")
        return cls.from_arrays(
            features["ts_ns"].to_numpy(),
            features["best_bid"].to_numpy(),
            features["best_ask"].to_numpy(),
            features["mid"].to_numpy(),
            end_ns=end_ns,
        )

    def concat(self, nxt: PricePath) -> PricePath:
        """This partition followed by the next one (labels may then cross the day end)."""
        if len(self) and len(nxt) and nxt.ts_ns[0] < self.ts_ns[-1]:
            raise ValueError("next PricePath starts before this one ends")
        return PricePath(
            np.concatenate([self.ts_ns, nxt.ts_ns]),
            np.concatenate([self.bid, nxt.bid]),
            np.concatenate([self.ask, nxt.ask]),
            np.concatenate([self.mid, nxt.mid]),
            max(self.end_ns, nxt.end_ns),
        )


@dataclass(frozen=True)
class TradePath:
    """Trade prices sorted by time, for `barrier_price='trade'`."""

    ts_ns: I64Array
    price: F64Array

    @classmethod
    def from_arrays(cls, ts_ns: npt.ArrayLike, price: npt.ArrayLike) -> TradePath:
        ts = np.asarray(ts_ns, dtype=np.int64)
        px = np.asarray(price, dtype=np.float64)
        order = np.argsort(ts, kind="stable")
        return cls(np.ascontiguousarray(ts[order]), np.ascontiguousarray(px[order]))


@numba.njit(cache=True)
def touch_fold(touch: int, r: float, pt: float, sl: float) -> int:
    """Fold one price's favourable move `r` into its timestamp's touch so far: the stop wins
    over the profit barrier inside one timestamp (their order is not observable); -1 while
    neither is touched."""
    if r <= -sl or touch == BARRIER_STOP:
        return BARRIER_STOP
    if r >= pt:
        return BARRIER_PROFIT
    return touch


@numba.njit(cache=True)
def _triple_barrier_kernel(
    ts: I64Array,
    bid: F64Array,
    ask: F64Array,
    mid: F64Array,
    end_ns: int,
    start_ts: I64Array,
    side: I64Array,
    horizon_ns: int,
    pt: float,
    sl: float,
    move_frac: float,
    slip: float,
    fee: float,
    use_trades: bool,
    trade_ts: I64Array,
    trade_px: F64Array,
) -> tuple[I64Array, I64Array, I64Array, I64Array, I64Array, I64Array, F64Array, F64Array]:
    n = ts.shape[0]
    m = start_ts.shape[0]
    entry_idx = np.full(m, -1, np.int64)
    exit_idx = np.full(m, -1, np.int64)
    t_end = np.zeros(m, np.int64)
    barrier = np.zeros(m, np.int64)  # 0 time, 1 profit, 2 stop
    move_ts = np.full(m, -1, np.int64)
    censored = np.zeros(m, np.int64)
    entry_px = np.full(m, np.nan)
    exit_px = np.full(m, np.nan)
    for i in range(m):
        s = side[i]
        e = np.searchsorted(ts, start_ts[i], side="right")
        if e >= n:
            t_end[i] = start_ts[i] + horizon_ns
            censored[i] = 1
            continue
        t0 = ts[e]
        while e + 1 < n and ts[e + 1] == t0:
            e += 1
        entry_idx[i] = e
        m0 = mid[e]
        deadline = t0 + horizon_ns
        # barrier prices: the book's mids after the entry event, or the trades after its time
        if use_trades:
            pts, ppx = trade_ts, trade_px
            j = np.searchsorted(trade_ts, t0, side="right")
        else:
            pts, ppx = ts, mid
            j = e + 1
        npx = pts.shape[0]
        hit = -1
        hit_ts = 0
        while j < npx and pts[j] <= deadline:
            tj = pts[j]
            while j < npx and pts[j] == tj:
                r = s * (ppx[j] / m0 - 1.0)
                hit = touch_fold(hit, r, pt, sl)
                if move_ts[i] < 0 and r >= move_frac:
                    move_ts[i] = tj
                j += 1
            if hit >= 0:
                hit_ts = tj
                break
        if hit >= 0:
            x = np.searchsorted(ts, hit_ts, side="right") - 1  # the book state at the touch
            barrier[i] = hit
            t_end[i] = hit_ts
        else:
            barrier[i] = BARRIER_TIME
            t_end[i] = deadline
            if deadline <= end_ns:
                x = np.searchsorted(ts, deadline, side="right") - 1
            else:
                # The data ends before the deadline and no barrier was touched: unknown outcome.
                x = n - 1
                censored[i] = 1
        exit_idx[i] = x
        if s > 0:
            ep = ask[e] * (1.0 + slip)
            xp = bid[x] * (1.0 - slip)
        else:
            ep = bid[e] * (1.0 - slip)
            xp = ask[x] * (1.0 + slip)
        entry_px[i] = ep
        exit_px[i] = xp
    return entry_idx, exit_idx, t_end, barrier, move_ts, censored, entry_px, exit_px


def triple_barrier(
    path: PricePath,
    ts_ns: npt.ArrayLike,
    direction: npt.ArrayLike,
    config: BacktestConfig,
    *,
    trades: TradePath | None = None,
) -> dict[str, np.ndarray]:
    """Label events at `ts_ns` with sides `direction` on `path`; returns column arrays
    (see `LABEL_SCHEMA` for the meaning). Null ints are -1 and null floats NaN here."""
    start = np.ascontiguousarray(np.asarray(ts_ns, dtype=np.int64))
    side = np.ascontiguousarray(np.asarray(direction, dtype=np.int64))
    if start.shape != side.shape:
        raise ValueError("ts_ns and direction must have the same length")
    if side.size and not np.all(np.abs(side) == 1):
        raise ValueError("direction must be +1 or -1")
    use_trades = config.barrier_price == "trade"
    if use_trades and trades is None:
        raise ValueError("barrier_price='trade' needs a TradePath (trades=...)")
    tr = trades or TradePath(np.zeros(0, np.int64), np.zeros(0, np.float64))
    if len(path) == 0:
        m = start.size
        return {
            "entry_idx": np.full(m, -1, np.int64),
            "exit_idx": np.full(m, -1, np.int64),
            "t_end_ns": start + config.max_holding_ns,
            "barrier": np.zeros(m, np.int64),
            "move_ts_ns": np.full(m, -1, np.int64),
            "censored": np.ones(m, bool),
            "entry_price": np.full(m, np.nan),
            "exit_price": np.full(m, np.nan),
            "ret": np.full(m, np.nan),
            "gross_ret": np.full(m, np.nan),
            "entry_ts_ns": np.full(m, -1, np.int64),
            "exit_ts_ns": np.full(m, -1, np.int64),
            "entry_mid": np.full(m, np.nan),
            "exit_mid": np.full(m, np.nan),
            "label": np.zeros(m, np.int64),
        }
    entry_idx, exit_idx, t_end, barrier, move_ts, censored, entry_px, exit_px = (
        _triple_barrier_kernel(
            path.ts_ns,
            path.bid,
            path.ask,
            path.mid,
            int(path.end_ns),
            start,
            side,
            int(config.max_holding_ns),
            float(config.profit_target_pct),
            float(config.stop_loss_pct),
            float(config.move_bps) / 10_000.0,
            float(config.slippage),
            float(config.fee_rate),
            use_trades,
            tr.ts_ns,
            tr.price,
        )
    )
    has_entry = entry_idx >= 0
    ei = np.where(has_entry, entry_idx, 0)
    xi = np.where(has_entry, exit_idx, 0)
    entry_mid = np.where(has_entry, path.mid[ei], np.nan)
    exit_mid = np.where(has_entry, path.mid[xi], np.nan)
    with np.errstate(invalid="ignore"):
        ret = (
            side * (exit_px - entry_px) / entry_px
            - config.fee_rate * (entry_px + exit_px) / entry_px
        )
        gross_ret = side * (exit_mid / entry_mid - 1.0)
    label = np.where(barrier == BARRIER_PROFIT, 1, np.where(barrier == BARRIER_STOP, -1, 0))
    return {
        "entry_idx": entry_idx,
        "exit_idx": exit_idx,
        "entry_ts_ns": np.where(has_entry, path.ts_ns[ei], -1),
        "exit_ts_ns": np.where(has_entry, path.ts_ns[xi], -1),
        "t_end_ns": t_end,
        "barrier": barrier,
        "label": label,
        "move_ts_ns": move_ts,
        "censored": censored.astype(bool),
        "entry_price": entry_px,
        "exit_price": exit_px,
        "entry_mid": entry_mid,
        "exit_mid": exit_mid,
        "ret": ret,
        "gross_ret": gross_ret,
    }


def _frame(
    kind: str,
    signal_id: list[str] | pl.Series,
    signal_type: list[str] | pl.Series,
    ts_ns: I64Array,
    direction: I64Array,
    score: F64Array,
    cols: dict[str, np.ndarray],
) -> pl.DataFrame:
    def nullable_int(a: np.ndarray) -> pl.Series:
        return pl.Series(a, dtype=pl.Int64)

    df = pl.DataFrame(
        {
            "kind": pl.Series([kind] * len(ts_ns), dtype=pl.String),
            "signal_id": pl.Series(signal_id, dtype=pl.String),
            "signal_type": pl.Series(signal_type, dtype=pl.String),
            "ts_ns": pl.Series(ts_ns, dtype=pl.Int64),
            "direction": pl.Series(direction, dtype=pl.Int8),
            "score": pl.Series(score, dtype=pl.Float64).fill_nan(None),
            "entry_ts_ns": nullable_int(cols["entry_ts_ns"]),
            "entry_price": pl.Series(cols["entry_price"], dtype=pl.Float64),
            "entry_mid": pl.Series(cols["entry_mid"], dtype=pl.Float64),
            "exit_ts_ns": nullable_int(cols["exit_ts_ns"]),
            "exit_price": pl.Series(cols["exit_price"], dtype=pl.Float64),
            "exit_mid": pl.Series(cols["exit_mid"], dtype=pl.Float64),
            "t_end_ns": pl.Series(cols["t_end_ns"], dtype=pl.Int64),
            "barrier": pl.Series(np.asarray(BARRIER_NAMES)[cols["barrier"]], dtype=pl.String),
            "label": pl.Series(cols["label"], dtype=pl.Int8),
            "ret": pl.Series(cols["ret"], dtype=pl.Float64).fill_nan(None),
            "gross_ret": pl.Series(cols["gross_ret"], dtype=pl.Float64).fill_nan(None),
            "censored": pl.Series(cols["censored"], dtype=pl.Boolean),
            "move_ts_ns": nullable_int(cols["move_ts_ns"]),
        }
    )
    # NaN / -1 of entry-less rows become nulls so SQL and polars aggregations skip them.
    return df.with_columns(
        [pl.col(c).fill_nan(None) for c in ("entry_price", "entry_mid", "exit_price", "exit_mid")]
        + [
            pl.when(pl.col(c) >= 0).then(pl.col(c)).otherwise(None).alias(c)
            for c in ("entry_ts_ns", "exit_ts_ns", "move_ts_ns")
        ]
    )


def grid_times(start_ns: int, end_ns: int, grid_ns: int) -> I64Array:
    """Multiples of `grid_ns` since the epoch in `[start_ns, end_ns]`."""
    if grid_ns <= 0:
        raise ValueError("grid_ns must be > 0")
    first = -(-start_ns // grid_ns) * grid_ns
    if first > end_ns:
        return np.zeros(0, np.int64)
    return np.arange(first, end_ns + 1, grid_ns, dtype=np.int64)


def label_signals(
    signals: pl.DataFrame,
    path: PricePath,
    config: BacktestConfig,
    *,
    trades: TradePath | None = None,
) -> pl.DataFrame:
    """Triple-barrier labels for a `signals` frame (`ts_ns, signal_id, signal_type, direction,
    score`); one row per signal with `kind='signal'`, in `LABEL_SCHEMA`."""
    missing = {"ts_ns", "signal_id", "direction"} - set(signals.columns)
    if missing:
        raise ValueError(f"signals frame lacks columns {sorted(missing)}")
    ts = signals["ts_ns"].to_numpy().astype(np.int64)
    direction = signals["direction"].to_numpy().astype(np.int64)
    cols = triple_barrier(path, ts, direction, config, trades=trades)
    n = signals.height
    stype = (
        signals["signal_type"].cast(pl.String)
        if "signal_type" in signals.columns
        else pl.Series([None] * n, dtype=pl.String)
    )
    score = (
        signals["score"].cast(pl.Float64).to_numpy()
        if "score" in signals.columns
        else np.full(n, np.nan)
    )
    sid = signals["signal_id"].cast(pl.String)
    return _frame("signal", sid, stype, ts, direction, score, cols)


def label_grid(
    path: PricePath,
    config: BacktestConfig,
    *,
    start_ns: int,
    end_ns: int,
    trades: TradePath | None = None,
) -> pl.DataFrame:
    """Labels at every grid point in `[start_ns, end_ns]`, both directions (`kind='grid'`,
    `signal_id = 'grid:<ts_ns>:<+1|-1>'`, `signal_type='grid'`, null score)."""
    times = grid_times(int(start_ns), int(end_ns), config.grid_ns)
    ts = np.repeat(times, 2)
    direction = np.tile(np.array([1, -1], np.int64), len(times))
    cols = triple_barrier(path, ts, direction, config, trades=trades)
    sid = [f"grid:{t}:{d:+d}" for t, d in zip(ts.tolist(), direction.tolist(), strict=True)]
    return _frame("grid", sid, ["grid"] * len(ts), ts, direction, np.full(len(ts), np.nan), cols)


def make_labels(
    signals: pl.DataFrame,
    path: PricePath,
    config: BacktestConfig,
    *,
    next_path: PricePath | None = None,
    trades: TradePath | None = None,
    grid: bool = True,
) -> pl.DataFrame:
    """The `labels` table of one partition: signal rows, then (with `grid=True`) grid rows over
    the partition's own time span. `next_path` is the next partition's price path; when it is
    None, labels needing prices after `path.end_ns` are censored. Sorted by
    `(ts_ns, kind, signal_id)`, so reruns give identical rows."""
    full = path.concat(next_path) if next_path is not None else path
    parts = [label_signals(signals, full, config, trades=trades)]
    if grid and len(path):
        parts.append(
            label_grid(
                full, config, start_ns=int(path.ts_ns[0]), end_ns=int(path.ts_ns[-1]), trades=trades
            )
        )
    out = pl.concat(parts, how="vertical")
    return out.sort(["ts_ns", "kind", "signal_id"])


def empty_labels() -> pl.DataFrame:
    return pl.DataFrame(schema=LABEL_SCHEMA)
