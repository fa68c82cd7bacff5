"""IRN: a class boundary map learned from inter-pixel relations, then a random walk
(Ahn, Cho & Kwak 2019, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel
Relations"; settings from the authors' code, see shared/notes/reference-implementations.md §1).

Three stages:

1. `make_labels`: two CAM argmaxes with constant background planes `conf_fg` (0.30, confident
   foreground) and `conf_bg` (0.05, confident background), each cleaned by a dense CRF whose
   unary comes from the hard argmax labels. The label is the class of the `conf_fg` map; pixels
   that are background there but not at `conf_bg` are unsure (255).
2. `train`: a boundary branch on a frozen backbone (`irn_boundary.BoundaryNet`; `trunk`: the
   CAM classifier's by default, or a pretrained one, as IRN's ImageNet ResNet-50):
   its sigmoid is the boundary map B on the stride-4 grid. The affinity of two cells is
   1 - max B along the straight path between them, learned from the pairs of the stride-4 label
   grid closer than `train_radius`.
3. `refine`: per image, B at stride 4 (averaged with the mirrored image's), path affinities of
   the pairs closer than `radius`, a random walk of the stride-4 CAMs multiplied by (1 - B)
   (affinity ** beta, 2 ** exp_times steps), bilinear ×4 upsampling, division by the global
   maximum, a constant background plane `bg_threshold`, argmax.

IRN's displacement-field branch is left out: it serves instance segmentation only, and the
boundary branch alone gives IRN's semantic pseudo-labels (irn issue #19).

Radii are in cells of the stride-4 grid, the grid IRN uses: `train_radius` 10 on the 128×128 grid
of a 512 crop, `radius` 5 at inference. Crops much smaller than 512 (e.g. 96 pixels = 24 cells)
want a proportionally smaller `train_radius` (about crop_size / 50) so that pairs still mostly
stay inside the crop.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss import registry
from wsss.ops.densecrf import label_crf
from wsss.refine import learned
from wsss.refine.crf import cam_probs, label_crf_labels
from wsss.refine.irn_boundary import STRIDE, BoundaryNet, boundary_map, pair_index, path_affinity
from wsss.refine.pool import IGNORE, plane_labels, write_labels
from wsss.refine.randomwalk import random_walk
from wsss.store import CamReader, StoreError

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset


REGISTER = {
    "kind": "refiner",
    "name": "irn",
    "learned": True,
    "walk_keys": ["radius", "beta", "exp_times", "bg_threshold", "inference"],
    "network_log": "irn",
    "needs_seg_head": False,
    "order": 2,
    "schema": {
        "description": "IRN, boundary branch (Ahn, Cho & Kwak 2019), wsss/refine/irn.py; "
                       "defaults: IRN's code",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            # cam_to_ir_label conf_fg_thres / conf_bg_thres
            "conf_fg": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.30},
            "conf_bg": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.05},
            # pairs closer than this (stride-4 cells) in training; IRN: 10 at 512
            "train_radius": {"type": "integer", "minimum": 2, "default": 10},
            # pairs closer than this (stride-4 cells) in the random walk
            "radius": {"type": "integer", "minimum": 2, "default": 5},
            # affinity ** beta in the transition matrix
            "beta": {"type": "number", "exclusiveMinimum": 0, "default": 10},
            # 2**8 = 256 random-walk steps
            "exp_times": {"type": "integer", "minimum": 0, "default": 8},
            # sem_seg_bg_thres: background plane after the walk
            "bg_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.25},
            # misc/imutils.crf_inference_label
            "crf": {"$ref": "#/$defs/refiner_crf",
                    "default": {"gt_prob": 0.7, "iterations": 10,
                                "gaussian": {"sxy": 3, "compat": 3},
                                "bilateral": {"sxy": 50, "srgb": 5, "compat": 10}}},
            # IRN train_irn: batch 32, 3 epochs, lr 0.1, wd 1e-4, crop 512, rescale 0.5-1.5 (of
            # VOC's 500-pixel long side: 250-750), flip, no colour jitter. The boundary branch
            # is trained at the base lr (IRN's ×10 group is the displacement branch). IRN's
            # PolyOptimizer passes wd into SGD's momentum slot: momentum 1e-4 (none to speak
            # of), step lr/(1 - 1e-4) = 0.1 per unit gradient. Here real momentum 0.9 and lr
            # 0.01: the same steady-state step lr/(1 - m) = 0.01/0.1 = 0.1, and the same decay
            # per step (that step × wd), as for the classifier in workflow/configs/voc.yaml.
            "training": {"$ref": "#/$defs/refiner_training",
                         "default": {"seed": 0, "epochs": 3, "batch_size": 32, "lr": 0.01,
                                     "momentum": 0.9, "nesterov": False,
                                     "weight_decay": 1.0e-4, "poly_power": 0.9,
                                     "new_layer_lr_mult": 1.0, "crop_size": 512,
                                     "resize_long": [250, 750], "hflip": True,
                                     "color_jitter": 0.0, "num_workers": 0,
                                     "checkpoint_every": 200, "cache_max_images": 2000}},
            # crf: the walk's argmax through the label CRF (`crf` block, as for the relation
            # labels); IRN's paper numbers include a CRF, its code does not (irn issue #26)
            "inference": {"$ref": "#/$defs/refiner_inference",
                          "default": {"flip": True, "crf": False}},
            # the frozen backbone (wsss.refine.features.refiner_trunk): `source: classifier`
            # the CAM variant's trained backbone; `pretrained` one built from `backbone`
            # ({name, output_stride, pretrained}), as IRN's ImageNet ResNet-50 (stride 16)
            "trunk": {"$ref": "#/$defs/refiner_trunk", "default": {"source": "classifier"}},
        },
    },
}


def settings(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """`cfg` completed with the REGISTER defaults for every key it leaves out (nested blocks
    merged)."""
    return registry.declared_settings(REGISTER, cfg)


# -- stage 1: inter-pixel relation labels -----------------------------------------------------

def relation_label(image: np.ndarray, cams: np.ndarray, keys: np.ndarray, conf_fg: float,
                   conf_bg: float, crf: dict[str, Any]) -> np.ndarray:
    """uint8 H×W relation label: keys[i] + 1 confident class, 0 confident background, 255 unsure."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.size == 0:  # no class: every pixel is background at any threshold
        return np.zeros(image.shape[:2], dtype=np.uint8)
    n = keys.size + 1
    fg, bg = (
        label_crf(image, cam_probs(cams, {"mode": "constant", "threshold": t}).argmax(axis=0),
                  n, crf)
        for t in (conf_fg, conf_bg)
    )
    label = plane_labels(keys, fg)
    label[(fg == 0) & (bg != 0)] = IGNORE
    return label


def _relation_task(image: np.ndarray, cams: np.ndarray, keys: np.ndarray,
                   cfg: dict[str, Any]) -> np.ndarray:
    return relation_label(image, cams, keys, cfg["conf_fg"], cfg["conf_bg"], cfg["crf"])


def make_labels(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
                out_path: str | os.PathLike, threads: int) -> None:
    """Write the relation labels (0 bg, k + 1 class k, 255 unsure) of `split` to `out_path`.

    One worker task per image runs both CRFs, so each image and its CAMs are read once. The CAM
    file must cover the split with the dataset's classes; on any error nothing is written.
    """
    write_labels(cam_path, ds, split, _relation_task, settings(cfg), out_path, threads,
                 f"{REGISTER['name']} labels")


# -- stage 2: the boundary network ------------------------------------------------------------

def train(ds: VocDataset, split: str, label_path: str | os.PathLike, cfg: dict[str, Any],
          classifier_path: str | os.PathLike, out_path: str | os.PathLike,
          device: torch.device | str) -> Path:
    """Train the boundary branch on the `split` relation labels; the weights go to `out_path`.

    The weights hold the frozen backbone too, so `refine` needs nothing else. Checkpoints and
    resume are `wsss.train.fit`'s (irn.checkpoint.pt, irn.log.csv next to `out_path`).
    """
    return learned.train_network(REGISTER, BoundaryNet, ds, split, label_path, cfg,
                                 classifier_path, out_path, device, frozen=True)


def load_boundary_net(weights_path: str | os.PathLike, device: torch.device) -> BoundaryNet:
    """The network `train` wrote, in eval mode on `device`."""
    return learned.load_network(BoundaryNet, weights_path, device)


# -- stage 3: random walk ---------------------------------------------------------------------

def walk_scores(cams: torch.Tensor, boundary: torch.Tensor, size: tuple[int, int],
                cfg: dict[str, Any]) -> torch.Tensor:
    """(K+1, H, W) scores of one image from its stride-4 CAMs (K, h, w) and boundary map
    (h, w): the constant background plane `bg_threshold`, then the walked CAMs divided by their
    global maximum. Runs on the device of `boundary`."""
    h, w = boundary.shape
    index = pair_index(h, w, int(cfg["radius"]), str(boundary.device))
    aff = path_affinity(boundary, index.path)
    cams = cams.to(boundary.device, torch.float32)
    # IRN damps the CAMs on boundaries, so that scores spread from object interiors
    scores = random_walk(cams * (1.0 - boundary), index.src, index.dst, aff,
                         cfg["beta"], int(cfg["exp_times"]))
    scores = F.interpolate(scores[None], scale_factor=STRIDE, mode="bilinear",
                           align_corners=False)[0, :, : size[0], : size[1]]
    scores = scores / scores.max().clamp_min(1e-5)  # one scale for all classes of the image
    background = scores.new_full((1, *size), float(cfg["bg_threshold"]))
    return torch.cat([background, scores])


def propagate(cams: torch.Tensor, boundary: torch.Tensor, keys: np.ndarray,
              size: tuple[int, int], cfg: dict[str, Any]) -> np.ndarray:
    """uint8 H×W label of one image: the argmax of `walk_scores` (no CRF)."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if keys.size == 0:
        return np.zeros(size, dtype=np.uint8)
    plane = walk_scores(cams, boundary, size, cfg).argmax(dim=0).cpu().numpy()
    return plane_labels(keys, plane)


def _lowres_cams(reader: CamReader, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return reader.get(image_id, lowres=True)
    except KeyError as err:  # h5py: the group has no cam_lowres dataset
        raise StoreError(
            f"{reader.path}: image '{image_id}' has no stride-4 CAMs (cam_lowres)"
        ) from err


def refine(cam_path: str | os.PathLike, ds: VocDataset, split: str, cfg: dict[str, Any],
           weights_path: str | os.PathLike, out_path: str | os.PathLike,
           device: torch.device | str, threads: int) -> None:
    """Random-walk pseudo-labels (uint8, 0 bg, k + 1 class k) of `split`, written to `out_path`.

    Images are never cropped: big grids make the random walk switch to its sparse path. The
    network runs image by image in this thread, the walks on its device in `threads` threads,
    and the optional label CRF of the walk's argmax (`inference.crf`) in `threads` processes
    (`learned.refine_walks`).
    """
    cfg = settings(cfg)
    flip = bool(cfg["inference"]["flip"])

    def start(reader: CamReader, ids: list[str]):
        net = load_boundary_net(weights_path, learned.as_device(device))

        def jobs():
            for image_id in ids:
                cams, keys = _lowres_cams(reader, image_id)
                image = ds.load_image(image_id)
                size = image.shape[:2]
                grid = (math.ceil(size[0] / STRIDE), math.ceil(size[1] / STRIDE))
                if cams.shape[1:] != grid:
                    raise StoreError(
                        f"{cam_path}: image '{image_id}': stride-4 CAM size {cams.shape[1:]} "
                        f"does not fit the {size[0]}×{size[1]} image (expected {grid})"
                    )
                walk = None
                if len(keys):
                    walk = functools.partial(walk_scores, torch.from_numpy(cams),
                                             boundary_map(net, image, flip), size, cfg)
                yield image_id, image, keys, walk

        return jobs()

    learned.refine_walks(cam_path, ds, split, cfg, out_path, threads, start, label_crf_labels,
                         cfg["crf"], f"{REGISTER['name']} refine")
