"""`wsss pretrain`: a backbone trained on the synthetic classification corpus (resumable)."""

from __future__ import annotations

import argparse

from wsss.cli.common import json_arg, stage, torch_threads


def cmd_pretrain(args) -> None:
    from wsss.pretrain import pretrain
    from wsss.train import pick_device

    pretrain(args.backbone, args.config, args.out, pick_device(args.device), torch_threads(args),
             stop_after=args.stop_after)


def add_commands(sub) -> None:
    sp = stage(sub, "pretrain", cmd_pretrain,
               "pretrain a backbone on the synthetic corpus (results/pretrained/<name>.pt)",
               with_dataset=False)
    sp.add_argument("--backbone", required=True, help="backbone registry key, e.g. tiny")
    sp.add_argument("--config", type=json_arg, default={},
                    help="the pretrain block as JSON (keys left out take the schema's defaults)")
    sp.add_argument("--out", required=True, help="weights file, e.g. results/pretrained/tiny.pt")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
