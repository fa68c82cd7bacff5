"""The refiners' feature extractors take the trained backbone out of any method's classifier,
from the `backbone` entry `wsss.train.fit` writes."""

import pytest
import torch

from wsss.data.transforms import ClassificationSet
from wsss.methods.base import build_method
from wsss.refine.features import classifier_backbone, classifier_trunk
from wsss.store import StoreError
from wsss.train import fit

BACKBONE = {"name": "tiny", "output_stride": 8, "pretrained": "none"}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)


def test_backbone_of_a_plain_and_of_a_plugin_method(tmp_path):
    for cfg, owner in [({"method": "baseline", "backbone": BACKBONE}, lambda m: m.backbone),
                       ({"method": "dscnet", "backbone": BACKBONE, "dscnet": {"base": "seam"}},
                        lambda m: m.base.backbone)]:
        torch.manual_seed(0)
        method = build_method(cfg, 3)
        path = tmp_path / f"{cfg['method']}.pt"
        # the trunk's own entry, and method weights under other names: only the entry is read
        decoy = {k: torch.zeros_like(v) for k, v in method.state_dict().items()}
        torch.save({"config": cfg, "method": decoy, "backbone": method.trunk.state_dict()}, path)
        trunk = classifier_trunk(path, frozen=True)
        assert _same(trunk.backbone.state_dict(), owner(method).state_dict())
        assert trunk.config == BACKBONE
        assert not any(p.requires_grad for p in trunk.backbone.parameters())
        assert not trunk.backbone.training
        thawed = classifier_backbone(path)
        assert all(p.requires_grad for p in thawed.parameters())


def test_reads_what_fit_writes(tmp_path, tiny_voc_config):
    from wsss.data.voc import VocDataset

    ds = VocDataset.from_config(tiny_voc_config)
    cfg = {"method": "hsc", "backbone": BACKBONE, "hsc": {"base": "baseline", "crf": {
        "psc": False, "rsc_csc": False}},
        "training": {"seed": 0, "epochs": 1, "batch_size": 2, "lr": 0.01, "momentum": 0.9,
                     "weight_decay": 1e-4, "poly_power": 0.9, "new_layer_lr_mult": 10,
                     "crop_size": 32, "resize_long": [32, 40], "hflip": True,
                     "color_jitter": 0.0, "num_workers": 0, "checkpoint_every": 100}}
    torch.manual_seed(0)
    method = build_method(cfg, ds.num_classes)
    ids = ds.ids("train")[:2]
    labels = {i: ds.image_labels(i).tolist() for i in ids}
    trainset = ClassificationSet(ds, ids, labels, cfg["training"], seed=0)
    path = fit(method, trainset, cfg["training"], tmp_path, {"config": cfg}, torch.device("cpu"))
    loaded = classifier_backbone(path)
    # trained weights, not a fresh initialisation: the plug-in's base owns the backbone
    assert _same(loaded.state_dict(), method.base.backbone.state_dict())


def test_an_old_classifier_without_the_entry_is_named(tmp_path):
    cfg = {"method": "baseline", "backbone": BACKBONE}
    path = tmp_path / "old_classifier.pt"
    torch.save({"config": cfg, "method": build_method(cfg, 3).state_dict()}, path)
    with pytest.raises(StoreError, match=r"old_classifier\.pt.*'backbone'"):
        classifier_backbone(path)
    with pytest.raises(StoreError, match=r"missing\.pt"):
        classifier_backbone(tmp_path / "missing.pt")
