"""The generator's own command line (`python -m wsss.data.synthetic`) and its contact sheet."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from wsss.data.synthetic.dataset import dataset_config, generate
from wsss.data.voc import VOC_PALETTE


def write_preview(
    root: str | os.PathLike,
    path: str | os.PathLike,
    count: int = 16,
    split: str = "train",
    zoom: int = 2,
    per_row: int = 4,
) -> None:
    """Contact sheet of (image, mask) pairs, `per_row` pairs per row, scaled by `zoom`."""
    from wsss.data.voc import VocDataset

    ds = VocDataset.from_config(dataset_config(root))
    pairs = [ds.load_pair(i) for i in ds.ids(split)[:count]]
    cell_h = max(image.shape[0] for image, _ in pairs) * zoom
    cell_w = max(image.shape[1] for image, _ in pairs) * zoom
    pad = 4 * zoom
    rows = -(-len(pairs) // per_row)
    sheet = Image.new(
        "RGB", (per_row * (2 * cell_w + 3 * pad), rows * (cell_h + pad)), (60, 60, 60)
    )
    for n, (image, mask) in enumerate(pairs):
        r, c = divmod(n, per_row)
        x0, y0 = c * (2 * cell_w + 3 * pad), r * (cell_h + pad)
        size = (image.shape[1] * zoom, image.shape[0] * zoom)
        colour_mask = Image.fromarray(mask)
        colour_mask.putpalette(VOC_PALETTE)
        sheet.paste(Image.fromarray(image).resize(size, Image.NEAREST), (x0, y0))
        sheet.paste(colour_mask.convert("RGB").resize(size, Image.NEAREST), (x0 + cell_w + pad, y0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wsss.data.synthetic", description="Generate the synthetic WSSS benchmark."
    )
    parser.add_argument("out", type=Path, help="dataset root to (re)create")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a DEFAULTS entry, e.g. --set num_train=50",
    )
    parser.add_argument("--preview", type=Path, help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    cfg: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    try:
        generate(args.out, cfg, threads=args.threads)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.preview:
        write_preview(args.out, args.preview)
    stats = json.loads((args.out / "generator.json").read_text())["statistics"]
    print(json.dumps(stats, indent=1))
    return 0
