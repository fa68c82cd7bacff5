"""The refiners' feature extractors take the trained backbone out of any method's classifier."""

import torch

from wsss.methods import build_method
from wsss.refine.features import classifier_backbone

BACKBONE = {"name": "tiny", "output_stride": 8, "pretrained": "none"}


def _save(tmp_path, cfg):
    torch.manual_seed(0)
    method = build_method(cfg, 3)
    path = tmp_path / f"{cfg['method']}.pt"
    torch.save({"config": cfg, "method": method.state_dict()}, path)
    return method, path


def test_backbone_of_a_plain_and_of_a_plugin_method(tmp_path):
    for cfg, owner in [({"method": "baseline", "backbone": BACKBONE}, lambda m: m.backbone),
                       ({"method": "dscnet", "backbone": BACKBONE, "dscnet": {"base": "seam"}},
                        lambda m: m.base.backbone)]:
        method, path = _save(tmp_path, cfg)
        loaded = classifier_backbone(path, frozen=True)
        want = owner(method).state_dict()
        got = loaded.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
        assert not any(p.requires_grad for p in loaded.parameters())
