"""`wsss refine-labels`, `refine-train`, `refine`: the stages of a learned refiner kind.

The kind's module (named by the block's `refiner:` key in the registry) provides
`make_labels`, `train` and `refine`.
"""

from __future__ import annotations

from wsss.cli.common import add_shard, dataset, json_arg, stage, threads, torch_threads


def _module(cfg: dict):
    from wsss.refine import refiner_module

    return refiner_module(cfg.get("refiner"))


def cmd_refine_labels(args) -> None:
    ds = dataset(args.dataset, args.shard)
    _module(args.config).make_labels(args.cams, ds, args.split, args.config, args.out,
                                     threads=threads(args))


def cmd_refine_train(args) -> None:
    from wsss.train import pick_device

    torch_threads(args)
    _module(args.config).train(dataset(args.dataset), args.split, args.labels, args.config,
                               args.classifier, args.out, pick_device(args.device))


def cmd_refine(args) -> None:
    from wsss.train import pick_device

    ds = dataset(args.dataset, args.shard)
    _module(args.config).refine(args.cams, ds, args.split, args.config, args.weights, args.out,
                                pick_device(args.device), threads=torch_threads(args))


def add_commands(sub) -> None:
    sp = stage(sub, "refine-labels", cmd_refine_labels,
               "training labels of a learned refiner from CAMs")
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--config", type=json_arg, required=True, help="refiner block as JSON")
    sp.add_argument("--out", required=True)
    add_shard(sp)

    sp = stage(sub, "refine-train", cmd_refine_train,
               "train a learned refiner's network (resumable)")
    sp.add_argument("--split", required=True, help="split of the training labels")
    sp.add_argument("--labels", required=True, help="label HDF5 from refine-labels")
    sp.add_argument("--config", type=json_arg, required=True, help="refiner block as JSON")
    sp.add_argument("--classifier", required=True, help="the CAM variant's classifier.pt")
    sp.add_argument("--out", required=True, help="weights file to write")
    sp.add_argument("--device", default="auto")

    sp = stage(sub, "refine", cmd_refine, "pseudo-labels from CAMs with a refiner kind")
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--config", type=json_arg, required=True, help="refiner block as JSON")
    sp.add_argument("--weights", default=None, help="the refiner's network (learned kinds)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--device", default="auto")
    add_shard(sp)
