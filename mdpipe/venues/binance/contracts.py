"""COIN-M contract sizes: what one inverse contract is worth, in USD.

COIN-M sizes (trades, book levels) are numbers of contracts, each worth a fixed amount of USD;
the base-currency equivalent of ``n`` contracts at price ``p`` is ``n x contractSize / p``.

Source: ``GET https://dapi.binance.com/dapi/v1/exchangeInfo``, field ``contractSize`` of each
symbol (the same number for a pair's perpetual and its delivery contracts), as listed in 2024.
Capture does not use this table: it takes ``contractSize`` from the market ccxt loads from the
same endpoint (``market["contractSize"]``), so a new listing works live at once. Import of a
recording has no exchangeInfo at hand; it looks the pair up here, and a pair missing here gets
a null ``base_qty`` (counted as ``contract_size_unknown``), never a guessed size.
"""

from __future__ import annotations

# pair (the market id without its _PERP / _YYMMDD suffix) -> USD per contract
COINM_CONTRACT_SIZE_USD: dict[str, float] = {
    "BTCUSD": 100.0,
    **{
        pair: 10.0
        for pair in (
            "ETHUSD", "BNBUSD", "SOLUSD", "XRPUSD", "ADAUSD", "DOGEUSD", "DOTUSD", "LINKUSD",
            "LTCUSD", "BCHUSD", "TRXUSD", "ETCUSD", "EOSUSD", "XLMUSD", "FILUSD", "UNIUSD",
            "AVAXUSD", "ATOMUSD", "MATICUSD", "NEARUSD", "AAVEUSD", "AXSUSD", "SANDUSD",
            "MANAUSD", "GALAUSD", "APEUSD", "OPUSD", "APTUSD", "ARBUSD", "SUIUSD", "WIFUSD",
            "ALGOUSD", "XTZUSD", "THETAUSD", "EGLDUSD", "FTMUSD", "ICPUSD", "RUNEUSD",
        )
    },
}  # fmt: skip


def contract_size(market_id: str) -> float | None:
    """USD per contract of a COIN-M market id (``BTCUSD_PERP`` -> 100.0), None if unknown."""
    pair = market_id.upper().partition("_")[0]
    return COINM_CONTRACT_SIZE_USD.get(pair)
