"""edgekit: train, compile and run visual anomaly detectors on a production line."""

__version__ = "0.1.0"
