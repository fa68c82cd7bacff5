"""WSSS methods. Importing this package registers every method under its config name."""

from wsss.methods import dscnet, hsc, seam  # noqa: F401  (register their `method:` names)
from wsss.methods.base import (
    METHODS,
    BackboneMethod,
    Method,
    MethodError,
    build_method,
    register,
)

__all__ = ["METHODS", "BackboneMethod", "Method", "MethodError", "build_method", "register"]
