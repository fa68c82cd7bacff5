"""IRN: a class boundary map learned from inter-pixel relations, then a random walk
(Ahn, Cho & Kwak 2019, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel
Relations"; settings from the authors' code, see shared/notes/reference-implementations.md §1).

Three stages:

1. `make_labels`: two CAM argmaxes with constant background planes `conf_fg` (0.30, confident
   foreground) and `conf_bg` (0.05, confident background), each cleaned by a dense CRF whose
   unary comes from the hard argmax labels. The label is the class of the `conf_fg` map; pixels
   that are background there but not at `conf_bg` are unsure (255).
2. `train`: a boundary branch on the classifier's frozen backbone. Every level (stem output and
   each stage) goes through a 1×1 conv to 32 channels + GroupNorm + ReLU, is upsampled to the
   stride-4 grid, and the concatenation is fused by a 1×1 conv into one channel; its sigmoid is
   the boundary map B. The affinity of two cells is 1 - max B along the straight path between
   them, learned from the pairs of the stride-4 label grid closer than `train_radius`.
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

import copy
import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.transforms import SegmentationSet, normalize, upsample
from wsss.methods.base import Method
from wsss.models.backbones import Backbone, build_backbone
from wsss.refine.crf import cam_probs, crf_params, dense_crf
from wsss.refine.features import classifier_backbone
from wsss.refine.pool import store_labels, walk_labels, write_labels
from wsss.refine.randomwalk import masked_mean, pair_indices, pair_labels, random_walk
from wsss.store import CamReader, LabelMap, LabelReader, StoreError
from wsss.train import fit, pick_device, seed_everything

if TYPE_CHECKING:
    from wsss.data.voc import VocDataset

IGNORE = 255
STRIDE = 4  # grid of the boundary map, the relation labels and the CAMs the walk propagates

DEFAULTS: dict[str, Any] = {
    "refiner": "irn",
    "conf_fg": 0.30,  # cam_to_ir_label conf_fg_thres
    "conf_bg": 0.05,  # cam_to_ir_label conf_bg_thres
    "train_radius": 10,  # pairs closer than this (stride-4 cells) in training; IRN: 10 at 512
    "radius": 5,  # pairs closer than this (stride-4 cells) in the random walk
    "beta": 10,  # affinity ** beta in the transition matrix
    "exp_times": 8,  # 2**8 = 256 random-walk steps
    "bg_threshold": 0.25,  # sem_seg_bg_thres: background plane after the walk
    "crf": {  # misc/imutils.crf_inference_label
        "gt_prob": 0.7,
        "iterations": 10,
        "gaussian": {"sxy": 3, "compat": 3},
        "bilateral": {"sxy": 50, "srgb": 5, "compat": 10},
    },
    "training": {
        # IRN train_irn: batch 32, 3 epochs, lr 0.1, wd 1e-4, crop 512, rescale 0.5-1.5 (of VOC's
        # 500-pixel long side: 250-750), flip, no colour jitter. The boundary branch is trained
        # at the base lr (IRN's ×10 group is the displacement branch). IRN's PolyOptimizer puts
        # wd into the momentum slot by mistake; as for the classifier, real momentum here.
        "seed": 0,
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1.0e-4,
        "poly_power": 0.9,
        "new_layer_lr_mult": 1.0,
        "crop_size": 512,
        "resize_long": [250, 750],
        "hflip": True,
        "color_jitter": 0.0,
        "num_workers": 0,
        "checkpoint_every": 200,
        "cache_max_images": 2000,
    },
    # crf: the walk's argmax through the label CRF (`crf` block, as for the relation labels);
    # IRN's paper numbers include a CRF, its code does not (irn issue #26)
    "inference": {"flip": True, "crf": False},
}

SIDE_WIDTH, SIDE_GROUPS = 32, 4  # IRN: every level -> 32 channels, GroupNorm(4)
# IRN adds 1e-5 inside the logs (not a clamp), which keeps a gradient for saturated pairs.
LOG_EPS = 1e-5


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def irn_config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """`cfg` completed with DEFAULTS for every key it leaves out (nested blocks merged)."""
    return _merge(DEFAULTS, cfg or {})



# -- stage 1: inter-pixel relation labels -----------------------------------------------------

def label_crf(image: np.ndarray, planes: np.ndarray, n: int, crf: dict[str, Any]) -> np.ndarray:
    """CRF argmax (H×W plane indices) of hard labels `planes` in 0..n-1: the unary gives the
    labelled plane probability gt_prob and every other plane an equal share of the rest."""
    gt = float(crf["gt_prob"])
    probs = np.full((n, *planes.shape), (1.0 - gt) / (n - 1), dtype=np.float32)
    np.put_along_axis(probs, planes[None].astype(np.int64), gt, axis=0)
    return dense_crf(image, probs, crf_params(crf)).argmax(axis=0)


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
    label = np.concatenate([[0], keys + 1]).astype(np.uint8)[fg]
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
    write_labels(cam_path, ds, split, _relation_task, irn_config(cfg), out_path, threads,
                 "irn labels")


# -- pairs and paths on the stride-4 grid -------------------------------------------------------

def path_cells(dy: int, dx: int) -> np.ndarray:
    """(K, 2) cells (y, x) of the 4-connected digital segment from (0, 0) to (dy, dx).

    The segment between the two cell centres is walked and a step is taken each time it crosses
    a cell border (y first where it passes a corner), so K = |dy| + |dx| + 1. A 4-connected path
    cannot slip diagonally between the cells of an 8-connected boundary line, as a path of one
    cell per row or column could.
    """
    ay, ax = abs(dy), abs(dx)
    # parameter in (0, 1) at which the segment crosses each horizontal / vertical cell border;
    # equal rationals give equal floats (IEEE division is correctly rounded), so ties are exact
    t = np.concatenate([(np.arange(ay) + 0.5) / max(ay, 1), (np.arange(ax) + 0.5) / max(ax, 1)])
    along_x = np.concatenate([np.zeros(ay, bool), np.ones(ax, bool)])
    steps = along_x[np.lexsort((along_x, t))]
    ys = np.concatenate([[0], np.cumsum(~steps)]) * int(np.sign(dy))
    xs = np.concatenate([[0], np.cumsum(steps)]) * int(np.sign(dx))
    return np.stack([ys, xs], axis=1).astype(np.int64)


class PairIndex(NamedTuple):
    """Pairs of `pair_indices(h, w, radius)` and, per pair, the flat cells of its path.

    `path` is (P, K) with K the longest path; shorter paths repeat their last cell, which
    leaves the maximum unchanged.
    """

    src: torch.Tensor
    dst: torch.Tensor
    path: torch.Tensor


@functools.lru_cache(maxsize=8)
def pair_index(h: int, w: int, radius: int, device: str = "cpu") -> PairIndex:
    """Cached PairIndex of an h×w grid (training sees one crop size, inference a few)."""
    src, dst = pair_indices(h, w, radius)
    dy, dx = dst // w - src // w, dst % w - src % w
    # one padded path table per offset; pairs find theirs through (dy, dx)
    span = 2 * radius + 1
    lut = np.zeros(max(radius, 1) * span, dtype=np.int64)
    offsets = sorted(set(zip(dy.tolist(), dx.tolist(), strict=True)))
    paths = [path_cells(oy, ox) for oy, ox in offsets]
    k = max((len(p) for p in paths), default=1)
    table = np.zeros((max(len(paths), 1), k), dtype=np.int64)
    for i, ((oy, ox), p) in enumerate(zip(offsets, paths, strict=True)):
        lut[oy * span + ox + radius] = i
        flat = p[:, 0] * w + p[:, 1]
        table[i] = np.concatenate([flat, np.full(k - len(flat), flat[-1])])
    path = src[:, None] + table[lut[dy * span + dx + radius]]
    return PairIndex(*(torch.from_numpy(a).to(device) for a in (src, dst, path)))


def path_affinity(boundary: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """(..., P) affinities 1 - max boundary along each pair's path, for (..., h, w) maps."""
    flat = boundary.flatten(-2)
    return 1.0 - flat[..., path].amax(dim=-1)


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
                  neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """IRN's (pos + neg) / 2 with pos = (bg_pos + fg_pos) / 2.

    Positives -log(aff), negatives -log(1 - aff); each term is the mean over its pairs in the
    whole batch, and a term without pairs is 0.
    """
    pos_loss = -torch.log(aff + LOG_EPS)
    neg_loss = -torch.log(1.0 + LOG_EPS - aff)
    terms = {
        "bg_pos": masked_mean(pos_loss, bg_pos),
        "fg_pos": masked_mean(pos_loss, fg_pos),
        "neg": masked_mean(neg_loss, neg),
    }
    terms["loss"] = (terms["bg_pos"] / 2 + terms["fg_pos"] / 2 + terms["neg"]) / 2
    return terms


def label_grid(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w): the label at each grid cell's centre (nearest), as IRN
    rescales its label crops by 1/4."""
    hh, ww = labels.shape[-2:]
    h, w = size
    ys = ((torch.arange(h, device=labels.device) + 0.5) * hh / h).long().clamp_max(hh - 1)
    xs = ((torch.arange(w, device=labels.device) + 0.5) * ww / w).long().clamp_max(ww - 1)
    return labels[:, ys][:, :, xs]


# -- stage 2: the boundary network ------------------------------------------------------------

class BoundaryNet(Method):
    """Frozen classifier backbone + IRN's boundary branch; driven by `wsss.train.fit`, not a
    registered method. `cfg` is the IRN config block (train_radius, training)."""

    def __init__(self, cfg: dict[str, Any], num_classes: int, backbone: Backbone):
        super().__init__(cfg, num_classes)
        self.backbone = backbone
        backbone.eval()
        backbone.requires_grad_(False)
        with torch.no_grad():  # level widths differ between backbones: ask the network
            widths = [f.shape[1] for f in self._levels(torch.zeros(1, 3, 32, 32))]
        self.sides = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, SIDE_WIDTH, 1, bias=False),
                          nn.GroupNorm(SIDE_GROUPS, SIDE_WIDTH), nn.ReLU(inplace=True))
            for c in widths
        )
        self.fuse = nn.Conv2d(SIDE_WIDTH * len(widths), 1, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # the trunk is fixed, BatchNorm statistics included
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        branch = list(self.sides.parameters()) + list(self.fuse.parameters())
        mult = self.cfg["training"]["new_layer_lr_mult"]
        return [{"params": branch, "lr_mult": mult, "name": "boundary"}]

    def _levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stem output (stride 4) and every stage output, without gradients."""
        with torch.no_grad():
            x = self.backbone.stem(images)
            levels = [x]
            for stage in self.backbone.stages:
                x = stage(x)
                levels.append(x)
        return levels

    def boundary_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, h4, w4) float32 logits on the stem's stride-4 grid."""
        with self.autocast():
            levels = self._levels(images)
            size = levels[0].shape[-2:]
            parts = [side(x) for side, x in zip(self.sides, levels, strict=True)]
            parts = [p if p.shape[-2:] == size else upsample(p, size) for p in parts]
            return self.fuse(torch.cat(parts, dim=1)).float()

    def boundary(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, h4, w4) boundary probabilities."""
        return torch.sigmoid(self.boundary_logits(images))

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        (opt,) = self.optimizers
        boundary = self.boundary(batch["image"])[:, 0]
        h, w = boundary.shape[-2:]
        index = pair_index(h, w, int(self.cfg["train_radius"]), str(boundary.device))
        grid = label_grid(batch["label"], (h, w))
        aff = path_affinity(boundary, index.path)
        terms = affinity_loss(aff, *pair_labels(grid, index.src, index.dst))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        return {k: v.item() for k, v in terms.items()}


def _as_device(device: torch.device | str) -> torch.device:
    return pick_device(device) if isinstance(device, str) else device


def train(ds: VocDataset, split: str, label_path: str | os.PathLike, cfg: dict[str, Any],
          classifier_path: str | os.PathLike, out_dir: str | os.PathLike,
          device: torch.device | str) -> Path:
    """Train the boundary branch on the `split` relation labels; returns out_dir/irn.pt.

    irn.pt holds the frozen backbone too, so `refine` needs nothing else. Checkpoints and
    resume are `wsss.train.fit`'s (irn.checkpoint.pt, irn.log.csv).
    """
    cfg = irn_config(cfg)
    training = cfg["training"]
    ids = ds.ids(split)
    with LabelReader(label_path) as reader:
        reader.check(ids, list(ds.classes))
    classifier = torch.load(classifier_path, map_location="cpu", weights_only=False)
    seed_everything(training["seed"])  # the branch's initial weights are part of the run
    net = BoundaryNet(cfg, ds.num_classes, classifier_backbone(classifier_path, frozen=True))
    labels = LabelMap(label_path, ids)
    trainset = SegmentationSet(ds, ids, labels, training, seed=training["seed"])
    meta = {"config": cfg, "backbone": classifier["config"]["backbone"],
            "classes": list(ds.classes)}
    del classifier
    try:
        return fit(net, trainset, training, out_dir, meta, _as_device(device), name="irn")
    finally:
        labels.close()


def load_boundary_net(weights_path: str | os.PathLike, device: torch.device) -> BoundaryNet:
    """The network `train` wrote, in eval mode on `device`."""
    if not Path(weights_path).is_file():
        raise StoreError(f"{weights_path}: no such IRN weights file")
    state = torch.load(weights_path, map_location="cpu", weights_only=False)
    bb = state["backbone"]
    backbone = build_backbone(bb["name"], bb["output_stride"], "none")
    net = BoundaryNet(state["config"], len(state["classes"]), backbone)
    net.load_state_dict(state["method"])
    return net.to(device).eval()


# -- stage 3: random walk ---------------------------------------------------------------------

@torch.no_grad()
def boundary_map(net: BoundaryNet, image: np.ndarray, flip: bool) -> torch.Tensor:
    """(⌈H/4⌉, ⌈W/4⌉) boundary probabilities of one H×W×3 image, on the network's device.

    The image is zero-padded (= the mean colour after normalisation) at the bottom and right to
    a multiple of the backbone's output stride, so every level lands exactly on the stride-4
    grid, and the map cropped back. With `flip`, the logits are averaged with the mirrored
    image's, flipped back (as IRN does).
    """
    hh, ww = image.shape[:2]
    stride = net.backbone.output_stride
    ph, pw = math.ceil(hh / stride) * stride, math.ceil(ww / stride) * stride
    x = torch.from_numpy(normalize(image))
    views = [x, x.flip(-1)] if flip else [x]
    batch = torch.stack([F.pad(v, (0, pw - ww, 0, ph - hh)) for v in views]).to(net.device)
    h, w = math.ceil(hh / STRIDE), math.ceil(ww / STRIDE)
    logits = net.boundary_logits(batch)[:, 0, :h, :w]
    if flip:
        logits[1] = logits[1].flip(-1)
    return torch.sigmoid(logits.mean(dim=0))


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
    return np.concatenate([[0], keys + 1]).astype(np.uint8)[plane]


def _post_crf(image: np.ndarray, scores: np.ndarray, keys: np.ndarray,
              cfg: dict[str, Any]) -> np.ndarray:
    """The walk's argmax cleaned by the label CRF of the relation labels (a process-pool task)."""
    planes = label_crf(image, scores.argmax(axis=0), len(keys) + 1, cfg["crf"])
    return np.concatenate([[0], np.asarray(keys, np.int64) + 1]).astype(np.uint8)[planes]


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
    and the optional CRF (`inference.crf`) in `threads` processes (`pool.walk_labels`).
    """
    cfg = irn_config(cfg)
    ids = ds.ids(split)
    flip = bool(cfg["inference"]["flip"])
    with CamReader(cam_path) as reader:
        reader.check(ids, list(ds.classes))
        net = load_boundary_net(weights_path, _as_device(device))

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

        post = _post_crf if cfg["inference"]["crf"] else None
        store_labels(walk_labels(jobs(), threads, post, cfg), ds, split, cfg, out_path,
                     "irn refine")
