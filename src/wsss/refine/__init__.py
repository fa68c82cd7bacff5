"""Refiners: CAMs -> pseudo-labels. `crf` needs no training; `psa` and `irn` train a network.

A learned refiner is a module with three stage functions:
`make_labels(cam_path, ds, split, cfg, out_path, threads)` (its training labels from CAMs),
`train(ds, split, label_path, cfg, classifier_path, out_dir, device) -> weights path`, and
`refine(cam_path, ds, split, cfg, weights_path, out_path, device, threads)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from wsss.errors import ConfigError

LEARNED_REFINERS = {"psa": "wsss.refine.psa", "irn": "wsss.refine.irn"}


def refiner_module(name: str) -> ModuleType:
    if name not in LEARNED_REFINERS:
        choices = sorted(LEARNED_REFINERS)
        raise ConfigError(f"unknown learned refiner '{name}'; choose one of {choices}")
    return importlib.import_module(LEARNED_REFINERS[name])
