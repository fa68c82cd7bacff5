"""`wsss synthetic`: generate the embedded benchmark."""

from __future__ import annotations

from pathlib import Path

from wsss.cli.common import json_arg, stage, threads


def cmd_synthetic(args) -> None:
    from wsss.data.synthetic import generate

    generate(Path(args.out), args.config, threads=threads(args))


def add_commands(sub) -> None:
    sp = stage(sub, "synthetic", cmd_synthetic, "generate the embedded synthetic benchmark",
               with_dataset=False)
    sp.add_argument("--config", type=json_arg, default={}, help="generator block as JSON")
    sp.add_argument("--out", required=True, help="dataset root to write (VOC layout)")
