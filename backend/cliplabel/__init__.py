"""cliplabel: a Label Studio ML backend that pre-labels images with CLIP and learns from annotators."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cliplabel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
