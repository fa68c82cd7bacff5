"""Errors that stages report as a one-line message and a non-zero exit (no traceback).

Kept free of heavy imports so that `wsss` commands which never touch torch start quickly.
"""


class ConfigError(ValueError):
    """A method, backbone or refiner setting that cannot be built."""


class MethodError(ConfigError):
    """A method name or configuration that cannot be built."""


class BackboneError(ConfigError):
    """A backbone name, stride or weight source that cannot be built."""
