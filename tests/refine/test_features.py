"""The refiners' trunks: the trained backbone taken out of any method's classifier (from the
`backbone` entry `wsss.train.fit` writes), or a declared pretrained backbone (`trunk` setting)."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from wsss.data.transforms import ClassificationSet
from wsss.errors import ConfigError
from wsss.methods.base import build_method
from wsss.models.backbones import build_backbone
from wsss.refine import irn, learned, psa
from wsss.refine.features import classifier_backbone, classifier_trunk, refiner_trunk
from wsss.schema import validate_config
from wsss.store import LabelWriter, StoreError
from wsss.train import fit

BACKBONE = {"name": "tiny", "output_stride": 8, "pretrained": "none"}
REPO = Path(__file__).resolve().parents[2]


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


# -- the `trunk` setting -------------------------------------------------------------------------

def _classifier(path, seed=0):
    torch.manual_seed(seed)
    method = build_method({"method": "baseline", "backbone": BACKBONE,
                           "training": {"new_layer_lr_mult": 10}}, 2)
    torch.save({"config": {"backbone": BACKBONE}, "method": method.state_dict(),
                "backbone": method.trunk.state_dict()}, path)
    return path, method.trunk.state_dict()


def _pretrained(path, seed=5, output_stride=8):
    """A tiny backbone's weights saved as a torchvision ResNet state dict (conv1, bn1, layerN),
    the form `pretrained: <path>` reads; returns the path and the backbone's own state dict."""
    torch.manual_seed(seed)
    state = build_backbone("tiny", output_stride).state_dict()
    rename = {"stem.0.": "conv1.", "stem.1.": "bn1.",
              **{f"stages.{i}.": f"layer{i + 1}." for i in range(3)}}
    resnet = {}
    for k, v in state.items():
        prefix = next(p for p in rename if k.startswith(p))
        resnet[rename[prefix] + k[len(prefix):]] = v
    torch.save(resnet, path)
    return path, state


def test_pretrained_trunk_has_the_declared_weights_and_classifier_the_classifiers(tmp_path):
    classifier, trained = _classifier(tmp_path / "classifier.pt")
    weights, declared = _pretrained(tmp_path / "tiny.pth")
    block = {"name": "tiny", "output_stride": 8, "pretrained": str(weights)}
    trunk = refiner_trunk({"source": "pretrained", "backbone": block}, classifier, frozen=True)
    assert _same(trunk.backbone.state_dict(), declared)
    assert not _same(trunk.backbone.state_dict(), trained)
    assert trunk.config == block  # what the weights file records as backbone_config
    assert not any(p.requires_grad for p in trunk.backbone.parameters())
    # the classifier is not read for a pretrained trunk
    other = refiner_trunk({"source": "pretrained", "backbone": block}, tmp_path / "none.pt")
    assert _same(other.backbone.state_dict(), declared)
    own = refiner_trunk({"source": "classifier"}, classifier)
    assert _same(own.backbone.state_dict(), trained) and own.config == BACKBONE


def test_a_bad_trunk_setting_is_named():
    key = "refiners.aff.trunk"
    with pytest.raises(ConfigError, match=r"refiners\.aff\.trunk\.source 'imagenet'"):
        refiner_trunk({"source": "imagenet"}, None, key=key)
    with pytest.raises(ConfigError, match=r"refiners\.aff\.trunk\.backbone.*\['pretrained'\]"):
        refiner_trunk({"source": "pretrained", "backbone": {"name": "tiny", "output_stride": 8}},
                      None, key=key)
    # a backbone block with the classifier's trunk would be ignored: refused instead
    with pytest.raises(ConfigError, match=r"refiners\.aff\.trunk\.backbone"):
        refiner_trunk({"source": "classifier", "backbone": BACKBONE}, None, key=key)


@pytest.mark.parametrize("kind", ["psa", "irn"])
def test_the_config_check_names_the_trunk_of_the_variant(kind):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    good = copy.deepcopy(cfg)
    good["refiners"]["mine"] = {"refiner": kind, "trunk": {
        "source": "pretrained", "backbone": {"name": "tiny", "pretrained": "none"}}}
    validate_config(good)  # the backbone block's own defaults fill in output_stride
    assert good["refiners"]["mine"]["trunk"]["backbone"]["output_stride"] == 8
    cfg["refiners"]["mine"] = {"refiner": kind, "trunk": {"source": "imagenet"}}
    with pytest.raises(ConfigError, match=r"refiners\.mine\.trunk\.source"):
        validate_config(cfg)


KINDS = {"psa": (psa, psa.REGISTER), "irn": (irn, irn.REGISTER)}
TINY_TRAINING = {"seed": 0, "epochs": 1, "batch_size": 2, "lr": 0.01, "crop_size": 32,
                 "resize_long": [32, 48], "color_jitter": 0.0, "checkpoint_every": 100}


@pytest.mark.parametrize("kind", ["psa", "irn"])
@pytest.mark.parametrize("source", ["classifier", "pretrained"])
def test_a_refiner_network_starts_from_its_trunk_and_records_it(kind, source, tmp_path,
                                                                tiny_voc_config, monkeypatch):
    from wsss.data.voc import VocDataset

    ds = VocDataset.from_config(tiny_voc_config)
    module, register = KINDS[kind]
    classifier, trained = _classifier(tmp_path / "classifier.pt")
    # stride 16 where the classifier's is 8: loading must rebuild the recorded architecture
    weights, declared = _pretrained(tmp_path / "tiny.pth", output_stride=16)
    labels = tmp_path / "labels.h5"
    with LabelWriter(labels, {"classes": list(ds.classes)}) as writer:
        for image_id in ds.ids("train"):
            writer.add(image_id, ds.load_mask(image_id))
    block = {"name": "tiny", "output_stride": 16, "pretrained": str(weights)}
    trunk = {"source": "pretrained", "backbone": block} if source == "pretrained" else {}
    cfg = {"refiner": kind, "radius": 3, "train_radius": 3, "training": TINY_TRAINING,
           "trunk": trunk}
    cfg = {k: v for k, v in cfg.items() if k in register["schema"]["properties"] or k == "refiner"}

    seen = {}
    real_fit = learned.fit

    def spy(net, *args, **kwargs):  # the weights the network starts training from
        seen["initial"] = copy.deepcopy(net.backbone.state_dict())
        return real_fit(net, *args, **kwargs)

    monkeypatch.setattr(learned, "fit", spy)
    out = module.train(ds, "train", labels, cfg, classifier, tmp_path / kind / "network.pt", "cpu")
    expected, other = (declared, trained) if source == "pretrained" else (trained, declared)
    assert _same(seen["initial"], expected) and not _same(seen["initial"], other)

    state = torch.load(out, map_location="cpu", weights_only=False)
    assert state["backbone_config"] == (block if source == "pretrained" else BACKBONE)
    net = learned.load_network(module.AffinityNet if kind == "psa" else module.BoundaryNet, out,
                               torch.device("cpu"))
    assert _same(net.state_dict(), state["method"])
    assert net.backbone.output_stride == (16 if source == "pretrained" else 8)
    if kind == "irn":  # the trunk is frozen: the trained network still holds its weights
        assert _same(net.backbone.state_dict(), expected)
