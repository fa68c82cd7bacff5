"""`wsss deeplab-train`, `wsss deeplab-predict`: retraining on pseudo-labels."""

from __future__ import annotations

import logging

from wsss.cli.common import dataset, json_arg, stage, torch_threads

log = logging.getLogger("wsss")


def cmd_deeplab_train(args) -> None:
    from wsss.deeplab.training import train
    from wsss.train import pick_device

    torch_threads(args)
    weights = train(dataset(args.dataset), args.split, args.labels, args.config, args.out,
                    pick_device(args.device))
    log.info("DeepLab weights: %s", weights)


def cmd_deeplab_predict(args) -> None:
    from wsss.deeplab.predict import predict
    from wsss.train import pick_device

    n = torch_threads(args)
    speed = predict(args.weights, dataset(args.dataset), args.split, args.config, args.out,
                    args.out_crf, pick_device(args.device), threads=n)
    log.info("DeepLab labels of %d images in %.1f s (%.1f images/s)", speed["images"],
             speed["seconds"], speed["images_per_second"])


def add_commands(sub) -> None:
    sp = stage(sub, "deeplab-train", cmd_deeplab_train,
               "train a DeepLab on a pseudo-label file (resumable)")
    sp.add_argument("--split", required=True, help="split of the training labels")
    sp.add_argument("--labels", required=True, help="pseudo-label HDF5 of that split")
    sp.add_argument("--config", type=json_arg, required=True, help="deeplab block as JSON")
    sp.add_argument("--out", required=True,
                    help="output folder (deeplab.pt, deeplab.checkpoint.pt, deeplab.log.csv)")
    sp.add_argument("--device", default="auto")

    sp = stage(sub, "deeplab-predict", cmd_deeplab_predict,
               "multi-scale + flip DeepLab labels of a split, with and without its CRF")
    sp.add_argument("--split", required=True)
    sp.add_argument("--weights", required=True, help="deeplab.pt from deeplab-train")
    sp.add_argument("--config", type=json_arg, required=True, help="deeplab block as JSON")
    sp.add_argument("--out", required=True, help="label HDF5 of the network's argmax")
    sp.add_argument("--out-crf", default=None, help="label HDF5 after the dense CRF")
    sp.add_argument("--device", default="auto")
