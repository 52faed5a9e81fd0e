"""maskface: reproducible masked face recognition."""

__version__ = "0.1.0"
