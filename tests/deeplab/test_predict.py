"""DeepLab inference: multi-scale + flip probabilities, the CRF in processes, the predict stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from deeplab.cases import CFG, gt_store, make_cfg

from wsss import cli
from wsss.data.voc import DatasetError, VocDataset
from wsss.deeplab.predict import multiscale_probs, predict
from wsss.deeplab.training import DeepLab, load_deeplab, train
from wsss.store import LabelReader, StoreError


def _method(cfg: dict, num_classes: int = 2) -> DeepLab:
    torch.manual_seed(0)
    method = DeepLab(cfg, num_classes)
    method.build_optimizers(cfg["training"])
    return method.train()


def test_train_and_predict_round_trip_through_the_cli(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    labels = gt_store(ds, "train", tmp_path / "gt.h5")
    dataset = json.dumps({"name": "tiny", **tiny_voc_config})
    train_block = {k: CFG[k] for k in ("model", "training")}  # what the workflow passes
    assert cli.main(["deeplab-train", "--dataset", dataset, "--split", "train", "--labels",
                     str(labels), "--config", json.dumps(train_block), "--device", "cpu",
                     "--threads", "2", "--out", str(tmp_path / "net")]) == 0
    weights = tmp_path / "net" / "deeplab.pt"
    assert (tmp_path / "net" / "deeplab.log.csv").is_file()
    state = torch.load(weights, weights_only=False)
    assert state["config"] == train_block and state["classes"] == list(ds.classes)
    assert state["labels"] == str(labels)

    block = {**CFG, "splits": ["val"]}

    def predict_cli(split: str, threads: str, weights: Path, stem: str) -> tuple[Path, Path]:
        out, out_crf = tmp_path / f"{stem}.h5", tmp_path / f"{stem}_crf.h5"
        assert cli.main(["deeplab-predict", "--dataset", dataset, "--split", split, "--weights",
                         str(weights), "--config", json.dumps(block), "--device", "cpu",
                         "--threads", threads, "--out", str(out), "--out-crf",
                         str(out_crf)]) == 0
        return out, out_crf

    for split, threads in (("val", "2"), ("train", "1")):
        out, out_crf = predict_cli(split, threads, weights, split)
        # the same labels as the stage's function run here on the trained weights
        direct, direct_crf = tmp_path / f"{split}_direct.h5", tmp_path / f"{split}_dcrf.h5"
        predict(weights, ds, split, block, direct, direct_crf, "cpu", 1)
        for path, want in ((out, direct), (out_crf, direct_crf)):
            with LabelReader(path) as reader, LabelReader(want) as ref:
                assert reader.ids == ds.ids(split) and reader.classes == list(ds.classes)
                assert reader.attr("refiner") == block and reader.attr("split") == split
                for image_id in reader.ids:
                    label = reader.get(image_id)
                    assert label.dtype == np.uint8
                    assert label.shape == ds.load_image(image_id).shape[:2]
                    np.testing.assert_array_equal(label, ref.get(image_id), err_msg=image_id)

    # known answer: the trained file with a head whose weights are zero and whose bias favours
    # the last class predicts that class on every pixel, plain and after the CRF (labels are
    # the logit channels: 0 background, k class k)
    method = load_deeplab(weights, ds.classes, torch.device("cpu"))
    head_weights, head_biases = method.net.head_parameters()
    last = ds.num_classes
    with torch.no_grad():
        for p in (*head_weights, *head_biases):
            p.zero_()
        head_biases[0][last] = 5.0
    biased = tmp_path / "biased.pt"
    torch.save({**state, "method": method.state_dict()}, biased)
    for path in predict_cli("val", "2", biased, "biased"):
        with LabelReader(path) as reader:
            for image_id in reader.ids:
                label = reader.get(image_id)
                assert label.shape == ds.load_image(image_id).shape[:2]
                assert (label == last).all(), (path.name, image_id, np.unique(label))


def test_predict_in_processes_matches_predict_in_this_process(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    cfg = make_cfg(epochs=1)
    weights = train(ds, "train", gt_store(ds, "train", tmp_path / "gt.h5"), cfg,
                            tmp_path / "net", "cpu")
    for threads in (1, 2):
        predict(weights, ds, "train", cfg, tmp_path / f"p{threads}.h5",
                        tmp_path / f"c{threads}.h5", "cpu", threads)
    for name in ("p", "c"):
        with LabelReader(tmp_path / f"{name}1.h5") as a, LabelReader(tmp_path / f"{name}2.h5") as b:
            assert a.ids == b.ids
            for image_id in a.ids:
                np.testing.assert_array_equal(a.get(image_id), b.get(image_id))


class _PoolNet(torch.nn.Module):
    """Logits = the normalised colour channels averaged over stride-8 cells: a network whose
    answer is known, to check where multi-scale + flip inference puts it."""

    output_stride = 8

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the method a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * torch.nn.functional.avg_pool2d(x, 8, ceil_mode=True)


@pytest.mark.parametrize("flip", [False, True])
def test_multiscale_probabilities_land_on_the_right_pixels(flip):
    method = _method(make_cfg()).eval()
    method.net = _PoolNet()
    images = []
    for h, w, split in ((44, 60, 27), (37, 30, 13)):  # batched together, splits off the grid
        image = np.zeros((h, w, 3), np.uint8)
        image[:, :split, 0] = 255  # red: channel 0 wins
        image[:, split:, 2] = 255  # blue: channel 2 wins
        images.append((image, split))
    probs = multiscale_probs(method, [im for im, _ in images], [1.0, 0.5, 1.5], flip)
    alone = multiscale_probs(method, [images[1][0]], [1.0, 0.5, 1.5], flip)
    for (image, split), p in zip(images, probs, strict=True):
        assert p.shape == (3, *image.shape[:2])
        torch.testing.assert_close(p.sum(dim=0), torch.ones(image.shape[:2]))
        label = p.argmax(dim=0)
        assert set(label.unique().tolist()) == {0, 2}
        edge = (label == 0).sum(dim=1).float()  # the first blue column of each row
        assert (edge - split).abs().max() <= 2, edge
    # an image's prediction does not depend on its batch mates: everywhere the same as alone
    # (padding it with zeros to its mate's size moved the pooled cells along its edges)
    torch.testing.assert_close(probs[1], alone[0])


def test_predict_failure_leaves_neither_file(tmp_path, tiny_voc_config):
    ds = VocDataset.from_config(tiny_voc_config)
    cfg = make_cfg(epochs=1)
    weights = train(ds, "train", gt_store(ds, "train", tmp_path / "gt.h5"), cfg,
                            tmp_path / "net", "cpu")
    out, out_crf = tmp_path / "val.h5", tmp_path / "val_crf.h5"
    with pytest.raises(StoreError, match="no_such.pt"):
        predict(tmp_path / "no_such.pt", ds, "val", cfg, out, out_crf, "cpu", 2)
    last = ds.ids("val")[-1]  # fails after the first image's labels were written
    next(ds.root.glob(f"JPEGImages/{last}.*")).write_bytes(b"not an image")
    cfg["inference"]["batch_size"] = 1
    with pytest.raises(DatasetError, match=last):
        predict(weights, ds, "val", cfg, out, out_crf, "cpu", 2)
    assert not out.exists() and not out_crf.exists()
    assert not list(tmp_path.glob(".val*"))


def test_the_model_block_warning_ignores_where_the_trunk_started(tmp_path, tiny_voc_config,
                                                                 caplog):
    """Trained from a weights file, predicted with the very block it was trained with: no
    warning (the loaded network is built with pretrained: none, which is not a difference);
    another ASPP block still warns."""
    from wsss.models.backbones import build_backbone

    ds = VocDataset.from_config(tiny_voc_config)
    trunk = tmp_path / "trunk.pt"
    torch.save({"backbone": "tiny", "state_dict": build_backbone("tiny", 8).net_state_dict()},
               trunk)
    cfg = make_cfg(epochs=1)
    cfg["model"]["backbone"]["pretrained"] = str(trunk)
    weights = train(ds, "train", gt_store(ds, "train", tmp_path / "gt.h5"), cfg,
                    tmp_path / "net", "cpu")
    with caplog.at_level("WARNING", logger="wsss"):
        predict(weights, ds, "val", cfg, tmp_path / "p.h5", None, "cpu")
    assert "another deeplab.model block" not in caplog.text
    other = {**cfg, "model": {**cfg["model"], "rates": [2, 4, 6, 8]}}
    with caplog.at_level("WARNING", logger="wsss"):
        predict(weights, ds, "val", other, tmp_path / "q.h5", None, "cpu")
    assert "another deeplab.model block" in caplog.text
