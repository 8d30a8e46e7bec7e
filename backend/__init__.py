"""cliplabel: a Label Studio ML backend that pre-labels images with CLIP and learns from annotators."""

__version__ = "0.1.0"
