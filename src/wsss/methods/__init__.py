"""WSSS methods. Importing this package registers every method under its config name."""

from wsss.methods import seam  # noqa: F401  (registers `method: seam`)
from wsss.methods.base import (
    METHODS,
    BackboneMethod,
    Method,
    MethodError,
    build_method,
    register,
)

__all__ = ["METHODS", "BackboneMethod", "Method", "MethodError", "build_method", "register"]
