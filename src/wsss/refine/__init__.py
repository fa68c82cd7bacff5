"""Refiners: CAMs -> pseudo-labels. Each refiner kind is one module that declares itself in
`wsss.registry` (kind "refiner"; `learned` when it trains a network).

Every kind provides `refine(cam_path, ds, split, cfg, weights_path, out_path, device, threads)`
(kinds without a network ignore `weights_path` and `device`). A learned kind also provides
`make_labels(cam_path, ds, split, cfg, out_path, threads)` (its training labels from CAMs) and
`train(ds, split, label_path, cfg, classifier_path, out_path, device) -> out_path` (its network,
written to `out_path`; checkpoint and log next to it). What the learned kinds share is in
`wsss.refine.learned`.
"""

from __future__ import annotations

from types import ModuleType

from wsss import registry


def refiner_module(name: str) -> ModuleType:
    """The module of the refiner kind `name`, imported through the registry; a ConfigError
    naming the `refiner` key and the declared kinds when there is none."""
    return registry.load(registry.component("refiner", name, "refiner"))
