"""mdpipe: crypto market-microstructure capture, tick lake, detectors and evaluation.

Importing this package never imports dagster: the capture process depends on it.
"""

__version__ = "0.1.0"
