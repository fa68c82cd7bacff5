"""`wsss deeplab-train`: retrain a DeepLab on a pseudo-label file (resumable)."""

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


def add_commands(sub) -> None:
    sp = stage(sub, "deeplab-train", cmd_deeplab_train,
               "train a DeepLab on a pseudo-label file (resumable)")
    sp.add_argument("--split", required=True, help="split of the training labels")
    sp.add_argument("--labels", required=True, help="pseudo-label HDF5 of that split")
    sp.add_argument("--config", type=json_arg, required=True, help="deeplab block as JSON")
    sp.add_argument("--out", required=True,
                    help="output folder (deeplab.pt, deeplab.checkpoint.pt, deeplab.log.csv)")
    sp.add_argument("--device", default="auto")
