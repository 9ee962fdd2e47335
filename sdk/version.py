"""The installed adsrt version (``adsrt.__version__``), for provenance in bundles, graphs and engine caches."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adsrt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
