"""mdpipe: crypto market-microstructure capture, tick lake, detectors and evaluation.

Importing this package never imports dagster: the capture process depends on it.
"""

__version__ = "0.1.0"

# The online detector API, imported lazily: `import mdpipe` stays cheap (no numba, no polars)
# for processes that only need a submodule.
_LAZY = {
    "OrderBookFeatureExtractor": "mdpipe.core.online",
    "TradeFeatureExtractor": "mdpipe.core.online",
    "OnlineEngine": "mdpipe.core.online",
    "MicrostructureDetector": "mdpipe.core.detectors",
    "Signal": "mdpipe.core.detectors",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mdpipe' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["MicrostructureDetector", "OnlineEngine", "OrderBookFeatureExtractor", "Signal",
           "TradeFeatureExtractor", "__version__"]  # fmt: skip
