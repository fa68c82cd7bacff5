"""`wsss deeplab-predict`: multi-scale + flip DeepLab labels of a split, with and without CRF."""

from __future__ import annotations

import logging

from wsss.cli.common import add_shard, dataset, json_arg, stage, torch_threads

log = logging.getLogger("wsss")


def cmd_deeplab_predict(args) -> None:
    from wsss.deeplab.predict import predict
    from wsss.train import pick_device

    n = torch_threads(args)
    ds = dataset(args.dataset, args.shard)
    speed = predict(args.weights, ds, args.split, args.config, args.out, args.out_crf,
                    pick_device(args.device), threads=n)
    log.info("DeepLab labels of %d images in %.1f s (%.1f images/s)", speed["images"],
             speed["seconds"], speed["images_per_second"])


def add_commands(sub) -> None:
    sp = stage(sub, "deeplab-predict", cmd_deeplab_predict,
               "multi-scale + flip DeepLab labels of a split, with and without its CRF")
    sp.add_argument("--split", required=True)
    sp.add_argument("--weights", required=True, help="deeplab.pt from deeplab-train")
    sp.add_argument("--config", type=json_arg, required=True, help="deeplab block as JSON")
    sp.add_argument("--out", required=True, help="label HDF5 of the network's argmax")
    sp.add_argument("--out-crf", default=None, help="label HDF5 after the dense CRF")
    sp.add_argument("--device", default="auto")
    add_shard(sp)
