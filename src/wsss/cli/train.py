"""`wsss train`: a method variant's classifier (resumable)."""

from __future__ import annotations

import argparse

from wsss.cli.common import dataset, json_arg, stage, torch_threads


def cmd_train(args) -> None:
    from wsss.classifier import train_classifier
    from wsss.train import pick_device

    torch_threads(args)
    train_classifier(dataset(args.dataset), args.index, args.split, args.variant, args.config,
                     args.out, pick_device(args.device), init_from=args.init_from,
                     stop_after=args.stop_after)


def add_commands(sub) -> None:
    sp = stage(sub, "train", cmd_train, "train a method variant's classifier (resumable)")
    sp.add_argument("--index", required=True)
    sp.add_argument("--split", default="train")
    sp.add_argument("--variant", required=True)
    sp.add_argument("--config", type=json_arg, required=True, help="variant block as JSON")
    sp.add_argument("--out", required=True, help="output folder (classifier.pt, train_log.csv)")
    sp.add_argument("--init-from", default=None,
                    help="classifier.pt of another variant to start from (init_from:)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
