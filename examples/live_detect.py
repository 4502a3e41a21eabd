"""Live microstructure signals in a few lines, with the capture stream object.

    .venv/bin/python examples/live_detect.py BTC/USDT --seconds 60
    # against the local exchange (no internet):
    #   mdpipe exchange-sim --recording data/binance-spot-2024-08-08/btcusdt_*.gz --port 8765
    #   python examples/live_detect.py BTC/USDT --ws-url ws://127.0.0.1:8765/ws \\
    #       --rest-url http://127.0.0.1:8765 --lake /tmp/demo-lake

Callbacks see each trade and each applied book update; the three parts of the online engine
turn them into features and signals. (Capture runs trade callbacks before book callbacks for a
batch, so a trade may be counted a few milliseconds early; `mdpipe.core.online.OnlineEngine`,
which `mdpipe capture` runs, holds book events for an exact as-of join.)
"""

import argparse
import asyncio

from mdpipe import MicrostructureDetector, OrderBookFeatureExtractor, TradeFeatureExtractor
from mdpipe.capture.daemon import Capture, CaptureConfig


async def main(symbol: str, seconds: float, **urls: str | None) -> None:
    cap = Capture(CaptureConfig(symbols=(symbol,), **urls))  # type: ignore[arg-type]
    book, trades = OrderBookFeatureExtractor(), TradeFeatureExtractor()
    detector = MicrostructureDetector(cooldown_seconds=30.0, venue="binance", symbol=symbol)

    def on_trade(t: dict) -> None:
        trades.add_trade(t["exch_ts_ns"], t["price"], t["qty"], t["side"])

    def on_book(view) -> None:  # type: ignore[no-untyped-def]
        f = book.update_top(*view.top(20), ts_ns=view.exch_ts_ns)
        f |= trades.features_at(book.last_asof_ns, f["mid"])
        f |= {"ts_ns": view.exch_ts_ns, "update_id": view.update_id,
              "is_warmup": book.last_is_warmup}  # fmt: skip
        if (s := detector.process(f)) is not None:
            print(f"{s.signal_type:6s} {s.direction:+d} score={s.score:.2f} "
                  f"{s.trigger} stat={s.trigger_value:.2f} mid={f['mid']:.2f} id={s.signal_id}")  # fmt: skip

    cap.register_trade_callback(on_trade)
    cap.register_book_callback(on_book)
    await cap.start()
    await asyncio.sleep(seconds)
    await cap.stop()
    print(detector.get_stats())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="print live microstructure signals")
    ap.add_argument("symbol", nargs="?", default="BTC/USDT")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--ws-url")
    ap.add_argument("--rest-url")
    ap.add_argument("--lake", default=None)
    a = ap.parse_args()
    asyncio.run(main(a.symbol, a.seconds, ws_url=a.ws_url, rest_url=a.rest_url, lake=a.lake))
