"""The `seghead` refiner kind: a single-stage method's own masks as pseudo-labels.

A method with a segmentation head (`seg_head` in its REGISTER) leaves, beside its CAMs, `seg`
class probabilities per image in its CAM store (`wsss.cams`). This refiner turns them into a
label store like every other refiner's: per pixel the argmax over the background and the
classes, optionally after DeepLab's dense CRF (unary -log p). On the splits named in
`restrict` (the training splits, whose image-level labels a WSSS method may use) only the
background and the image's labelled classes compete; elsewhere (val, test) every class does,
since there the image labels are ground truth the method may not see. Nothing is trained, so
there is no network to load.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from wsss import registry
from wsss.errors import ConfigError
from wsss.ops.densecrf import dense_crf
from wsss.refine.pool import label_stream, store_labels
from wsss.store import CamReader, StoreError

if TYPE_CHECKING:
    import torch

    from wsss.data.voc import VocDataset

REGISTER = {
    "kind": "refiner",
    "name": "seghead",
    "learned": False,
    "walk_keys": [],
    "needs_seg_head": True,
    "order": 3,
    "schema": {
        "description": "a segmentation head's own predictions (the CAM store's `seg`) as "
                       "pseudo-labels (wsss/refine/seghead.py); needs a method with seg_head",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            # the training splits: their image labels are the weak supervision itself
            "restrict": {
                "description": "splits whose labels are restricted to the background and the "
                               "image's labelled classes (training splits only: on val/test "
                               "the image labels are ground truth)",
                "type": "array",
                "items": {"type": "string"},
                "uniqueItems": True,
                "default": ["train", "train_aug"],
            },
            "crf": {
                "description": "false, or a dense CRF (unary -log p of the head's "
                               "probabilities) before the argmax; gt_prob does not apply",
                "oneOf": [
                    {"const": False},
                    {"$ref": "#/$defs/refiner_crf",
                     "default": {"iterations": 10, "gaussian": {"sxy": 3, "compat": 3},
                                 "bilateral": {"sxy": 80, "srgb": 13, "compat": 10}}},
                ],
                "default": False,
            },
        },
    },
}


def settings(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The refiner block `cfg` completed with the REGISTER defaults; a CRF block given as a
    dict is completed with the CRF defaults (`crf: {}` is the default CRF); the kind's name is
    under `refiner`, as in every refiner's recorded block."""
    schema = REGISTER["schema"]["properties"]
    out = registry.declared_settings(REGISTER, cfg)
    crf = out["crf"]
    if crf is True:
        raise ConfigError("seghead.crf: false, or a CRF block ({} for the default CRF)")
    if crf is not False:
        if not isinstance(crf, dict):
            raise ConfigError(f"seghead.crf: false or a CRF block, got {crf!r}")
        if "gt_prob" in crf:
            raise ConfigError("seghead.crf.gt_prob: not used (the unary is the head's "
                              "probabilities, not hard labels)")
        out["crf"] = registry.merge_defaults(schema["crf"]["oneOf"][1]["default"], crf)
    if not isinstance(out["restrict"], list):
        raise ConfigError(f"seghead.restrict: a list of split names, got {out['restrict']!r}")
    return out


def allowed_planes(num_planes: int, keys: np.ndarray | None) -> np.ndarray:
    """Indices of the planes that compete: all, or (restricted) background and keys + 1."""
    if keys is None:
        return np.arange(num_planes)
    keys = np.asarray(keys, np.int64).reshape(-1)
    return np.concatenate([[0], np.unique(keys) + 1]).astype(np.int64)


def seg_label(image: np.ndarray, seg: np.ndarray, keys: np.ndarray | None,
              cfg: dict[str, Any]) -> np.ndarray:
    """uint8 H×W label of one image from its (C+1)×H×W probabilities (a pool task).

    With `keys` (a restricted split) only the background and those classes compete, in the
    CRF too; `cfg` is a completed seghead block.
    """
    seg = np.asarray(seg, np.float32)
    planes = allowed_planes(seg.shape[0], keys)
    probs = seg[planes]
    if cfg["crf"] is not False:
        probs = dense_crf(image, probs, cfg["crf"])
    return planes.astype(np.uint8)[probs.argmax(axis=0)]


def check_seg(reader: CamReader, ids: list[str]) -> None:
    """Fail, naming the file, if the store lacks `seg` (its method has no segmentation head)."""
    for image_id in ids:
        if not reader.has_seg(image_id):
            raise StoreError(
                f"{reader.path}: no segmentation predictions ('seg') for image '{image_id}': "
                f"method '{reader.attr('method')}' has no segmentation head, so the seghead "
                f"refiner cannot use these CAMs (it needs a method declaring seg_head)")


def refine(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
           weights_path: str | os.PathLike | None, out_path: str | os.PathLike,
           device: torch.device | str, threads: int) -> None:
    """Labels of `split` (uint8, 0 bg, k + 1 class k) from the `seg` of `cam_path`, written to
    `out_path`; the CRFs (if any) run in `threads` processes. `weights_path` and `device` are
    unused (nothing is learned). On any error no output file is left behind."""
    cfg = settings(cfg)
    restricted = split in cfg["restrict"]
    ids = ds.ids(split)
    with CamReader(cam_path) as reader:
        reader.check(ids, list(ds.classes))
        check_seg(reader, ids)

        def tasks():
            for image_id in ids:
                # the CAM store's keys are the image's labels (the planes it kept)
                keys = reader.get(image_id)[1] if restricted else None
                seg = reader.get_seg(image_id)
                if seg.shape[0] != ds.num_classes + 1:
                    raise StoreError(f"{cam_path}: 'seg' of image '{image_id}' has "
                                     f"{seg.shape[0]} planes, expected {ds.num_classes + 1} "
                                     f"(background + {ds.num_classes} classes)")
                yield image_id, seg, keys

        labels = label_stream(tasks(), ds.load_image, seg_label, cfg, threads, len(ids))
        store_labels(labels, ds, split, cfg, out_path, REGISTER["name"])
