"""How much a trained ACR reconstructor infers of one segment from the other (a script, not a
test): its reconstruction error on the hidden region against that of a predictor that knows
nothing but the visible pixels' mean colour.

    .venv/bin/python tests/benchmarks/acr_inferability.py --workdir DIR --variants acr acr_s1

Reads `DIR/results/<dataset>/<variant>/classifier.pt` (the variant's config is in it) and the
dataset under DIR/results, and runs the trained networks in eval mode over one epoch of the
variant's training crops (epoch 0's augmentation, torch seed 0 for the target classes and SRF
cells). Per variant and term, the mean L1 (as the losses: over B×3×H×W) of
  decoder   the reconstructor's reconstruction on the term's scored region, and
  trivial   each image's mean colour over the pixels its input keeps visible,
and their ratio: near 1, the decoder infers no more of the hidden region than its mean colour,
so the adversarial terms carry little information about where the CAM is wrong. Terms: ru_t,
ru_nt at the end-of-training SRF probability and without SRF (p = 1), cu_t and cu_nt (the CU
inputs and masks), and full (the whole image, nothing hidden).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

from wsss.cli.common import dataset
from wsss.data.index import read_index
from wsss.data.transforms import ClassificationSet
from wsss.methods.acr import pick_targets, srf_grid, target_cam
from wsss.methods.base import load_method
from wsss.schema import validate_config


def _trivial(image: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Each image's mean colour over `visible` (B, 1, H, W weights), broadcast to the image."""
    w = visible.expand_as(image)
    total = w.sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return ((image * w).sum(dim=(2, 3), keepdim=True) / total).expand_as(image)


def _l1(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((pred - image).abs() * mask).mean())


@torch.no_grad()
def inferability(method, batches) -> dict[str, tuple[float, float]]:
    """term -> (decoder error, trivial error), averaged over batches."""
    rec = method.reconstructor
    srf = method.acr["srf"]
    sums: dict[str, list[float]] = {}
    torch.manual_seed(0)
    for batch in batches:
        image, labels = batch["image"], batch["label"].float()
        size = tuple(image.shape[-2:])
        targets = pick_targets(labels)
        a = target_cam(method.classifier(method.backbone(image)), labels, targets, size)
        _, x = rec.encode(image)
        cases = {}
        for tag, p in (("end", srf["hide_end"]), ("p1", 1.0)):
            hidden = srf_grid(len(image), int(srf["grid"]), p, size)
            h_nt, h_t = (1 - a) * hidden, a * hidden
            cases[f"ru_t@{tag}"] = (x * (1 - h_nt), 1 - h_nt, h_nt)
            cases[f"ru_nt@{tag}"] = (x * (1 - h_t), 1 - h_t, h_t)
        cases["cu_t"] = (x * a, a, 1 - a)
        cases["cu_nt"] = (x * (1 - a), 1 - a, a)
        ones = torch.ones_like(a)
        cases["full"] = (x, ones, ones)
        for term, (inp, visible, scored) in cases.items():
            acc = sums.setdefault(term, [0.0, 0.0, 0.0])
            acc[0] += _l1(rec.decoder(inp), image, scored)
            acc[1] += _l1(_trivial(image, visible), image, scored)
            acc[2] += 1
    return {t: (s[0] / s[2], s[1] / s[2]) for t, s in sums.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("."))
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--configfile", default="config.yaml", help="for the dataset block")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.chdir(args.workdir)
    d = validate_config(yaml.safe_load(Path(args.configfile).read_text()))["dataset"]
    name = d["name"]
    root = f"results/{name}/data/voc" if d["kind"] == "synthetic" else d["root"]
    ds = dataset({"root": root, **{k: d[k] for k in ("splits", "mask_dir", "label_source",
                                                        "classes")}})
    print(f"{'variant':14s} {'term':10s} {'decoder':>8s} {'trivial':>8s} {'ratio':>6s}")
    for variant in args.variants:
        path = Path(f"results/{name}/{variant}/classifier.pt")
        state = torch.load(path, map_location="cpu", weights_only=False)
        cfg = state["config"]
        info = read_index(f"results/{name}/data/index.json")["splits"][d["train_split"]]
        ids = [i for i in info["ids"] if info["labels"][i]]
        method = load_method(path, cfg, ds.num_classes)
        trainset = ClassificationSet(ds, ids, info["labels"], cfg["training"],
                                     seed=cfg["training"]["seed"])
        bs = int(cfg["training"]["batch_size"])
        keys = [(i, 0) for i in range(len(ids))]
        batches = [torch.utils.data.default_collate([trainset[k] for k in keys[j:j + bs]])
                   for j in range(0, len(keys) - bs + 1, bs)]
        for term, (dec, triv) in inferability(method, batches).items():
            print(f"{variant:14s} {term:10s} {dec:8.4f} {triv:8.4f} {dec / triv:6.2f}")


if __name__ == "__main__":
    main()
