"""Errors that stages report as a one-line message and a non-zero exit (no traceback).

Kept free of heavy imports so that `wsss` commands which never touch torch start quickly.
"""


class ConfigError(ValueError):
    """A method, backbone or refiner setting that cannot be built."""


class MethodError(ConfigError):
    """A method name or configuration that cannot be built."""


class BackboneError(ConfigError):
    """A backbone name, stride or weight source that cannot be built."""


class TrainingError(RuntimeError):
    """A training run that cannot go on (`wsss.train.fit`)."""


class TrainingDiverged(TrainingError):
    """A loss term or a weight became NaN or infinite; names the run, the step and the terms."""


class CheckpointError(TrainingError):
    """A checkpoint of this very run (same config, code and data) that cannot be loaded."""
