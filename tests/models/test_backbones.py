import pytest
import torch

from wsss.models.backbones import BackboneError, build_backbone


def _cfg(**backbone):
    return {
        "method": "baseline",
        "backbone": {"name": "tiny", "output_stride": 8, "pretrained": "none", **backbone},
        "training": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "new_layer_lr_mult": 10},
    }


@pytest.mark.parametrize(("name", "stride"), [("tiny", 8), ("tiny", 16), ("resnet50", 16),
                                              ("resnet50", 8), ("resnet101", 16)])
def test_backbone_output_stride(name, stride):
    net = build_backbone(name, stride).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, net.out_channels, 64 // stride, 96 // stride)


def test_backbone_errors_name_the_choices(tmp_path):
    with pytest.raises(BackboneError, match="resnet50"):
        build_backbone("vgg", 16)
    with pytest.raises(BackboneError, match="output_stride"):
        build_backbone("resnet50", 32)
    with pytest.raises(BackboneError, match="no ImageNet weights"):
        build_backbone("tiny", 8, "imagenet")
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("tiny", 8, str(tmp_path / "missing.pth"))


def test_pretrained_path_loads_the_given_weights(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(1)
    published = resnet50(weights=None)  # stands in for a downloaded torchvision checkpoint
    path = tmp_path / "r50.pth"
    torch.save(published.state_dict(), path)
    loaded = build_backbone("resnet50", 16, str(path))
    assert torch.equal(loaded.stages[3][0].conv1.weight, published.layer4[0].conv1.weight)
    assert torch.equal(loaded.stem[0].weight, published.conv1.weight)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="do not fit"):
        build_backbone("resnet50", 16, str(tmp_path / "bad.pth"))


def test_declared_backbones_are_the_built_ones():
    """The registry's declarations (read without torch) and the builders their modules
    register when loaded: a backbone declared and not built (or the reverse) fails here, not
    mid-run."""
    from wsss import registry
    from wsss.models.backbones import BACKBONES

    for comp in registry.components("backbone").values():
        registry.load(comp)
    assert sorted(registry.names("backbone")) == sorted(BACKBONES)


def _pretrain_file(path, name: str, backbone) -> None:
    """A file in the pretrain stage's format: the architecture's name and its weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone": name, "state_dict": backbone.net_state_dict(),
                "held_out_accuracy": 0.5}, path)


def test_pretrained_synthetic_reads_the_pretrain_stages_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # jobs run in the workflow's directory
    with pytest.raises(BackboneError, match=r"results/pretrained/tiny\.pt.*pretrain stage"):
        build_backbone("tiny", 8, "synthetic")
    torch.manual_seed(3)
    source = build_backbone("tiny", 8)
    _pretrain_file(tmp_path / "results/pretrained/tiny.pt", "tiny", source)
    torch.manual_seed(4)  # a different initialisation, which the weights must replace
    for stride in (8, 16):  # the weights do not depend on the output stride
        loaded = build_backbone("tiny", stride, "synthetic")
        for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values(),
                             strict=True):
            assert torch.equal(a, b), k


def test_a_pretrain_file_of_another_architecture_is_refused_by_name(tmp_path):
    path = tmp_path / "w.pt"
    _pretrain_file(path, "resnet50", build_backbone("tiny", 8))  # mislabelled on purpose
    with pytest.raises(BackboneError, match=r"w\.pt.*'resnet50', not 'tiny'"):
        build_backbone("tiny", 8, str(path))
