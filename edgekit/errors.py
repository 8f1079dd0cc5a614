"""Error hierarchy. Every user-facing failure is an EdgekitError carrying a one-line message
that names the thing and the fix; the CLI prints it without a traceback (unless --debug)."""


class EdgekitError(Exception):
    """Base class of every error edgekit raises on purpose."""

    exit_code = 2


class ConfigError(EdgekitError):
    """A recipe, run config or CLI argument is invalid."""


class DataError(EdgekitError):
    """A dataset, image or frame cannot be used."""


class BundleError(EdgekitError):
    """A run directory or bundle is missing, tampered with or incompatible."""


class DeviceError(EdgekitError):
    """Hardware (camera, GPIO, PLC, GPU, TensorRT) is missing or failed."""
