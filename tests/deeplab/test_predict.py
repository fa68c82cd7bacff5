"""DeepLab inference: multi-scale + flip probabilities, the CRF in processes, the predict stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from deeplab.cases import CFG, gt_store, make_cfg

from wsss import cli
from wsss.data.voc import DatasetError, VocDataset
from wsss.deeplab.predict import multiscale_probs, predict
from wsss.deeplab.training import DeepLab, train
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
    for split, threads in (("val", "2"), ("train", "1")):
        out, out_crf = tmp_path / f"{split}.h5", tmp_path / f"{split}_crf.h5"
        assert cli.main(["deeplab-predict", "--dataset", dataset, "--split", split, "--weights",
                         str(weights), "--config", json.dumps(block), "--device", "cpu",
                         "--threads", threads, "--out", str(out), "--out-crf",
                         str(out_crf)]) == 0
        for path in (out, out_crf):
            with LabelReader(path) as reader:
                assert reader.ids == ds.ids(split) and reader.classes == list(ds.classes)
                assert reader.attr("refiner") == block and reader.attr("split") == split
                for image_id in reader.ids:
                    label = reader.get(image_id)
                    assert label.dtype == np.uint8
                    assert label.shape == ds.load_image(image_id).shape[:2]
                    assert label.max() <= ds.num_classes


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
    for h, w, split in ((44, 60, 27), (37, 30, 13)):  # padded together, splits off the grid
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
    # the smaller image was padded in the batch; where no cell that saw padding reaches (at
    # scale 0.5, the cells' centres are 16 pixels apart) it gets the same answer as alone
    torch.testing.assert_close(probs[1][:, :24, :8], alone[0][:, :24, :8])


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
