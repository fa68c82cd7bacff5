"""`wsss coco-masks`: COCO 2014 instances -> VOC-layout masks; `wsss coco-layout`: a VOC-layout
dataset (the synthetic benchmark) written in COCO 2014 layout."""

from __future__ import annotations

import logging

from wsss.cli.common import json_arg, stage, threads

log = logging.getLogger("wsss")


def _str_dict(value, option: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{option} must be a JSON object of strings, got {value!r}")
    return value


def cmd_coco_masks(args) -> None:
    from wsss.data.coco import convert_coco

    record = convert_coco(args.root, _str_dict(args.splits, "--splits"), args.out,
                          image_dirs=_str_dict(args.image_dirs or {}, "--image-dirs"),
                          drop_empty=args.drop_empty, threads=threads(args))
    log.info("wrote %d classes, splits %s to %s", len(record["classes"]),
             {s: r["kept"] for s, r in record["splits"].items()}, args.out)


def cmd_coco_layout(args) -> None:
    from wsss.data.coco_writer import write_coco_layout

    splits = args.splits
    if not isinstance(splits, dict):
        raise ValueError(f"--splits must be a JSON object {{split: list file}}, got {splits!r}")
    record = write_coco_layout(args.voc_root, splits, args.out, classes=args.classes,
                               crowd_every=args.crowd_every, polygon_every=args.polygon_every,
                               mask_dir=args.mask_dir)
    log.info("wrote %s in COCO layout to %s",
             {s: r["images"] for s, r in record["splits"].items()}, args.out)


def add_commands(sub) -> None:
    sp = stage(sub, "coco-masks", cmd_coco_masks,
               "convert COCO instance annotations to VOC-layout semantic masks",
               with_dataset=False)
    sp.add_argument("--root", required=True, help="COCO root (annotations/, train2014/, ...)")
    sp.add_argument("--splits", type=json_arg, required=True,
                    help='JSON {split: instances JSON relative to root}, e.g. '
                         '{"train": "annotations/instances_train2014.json"}')
    sp.add_argument("--image-dirs", type=json_arg, default=None,
                    help="JSON {split: image folder relative to root}; default: from the "
                         "JSON's name (instances_train2014.json -> train2014)")
    sp.add_argument("--drop-empty", nargs="*", default=None, metavar="SPLIT",
                    help="splits whose lists leave out images without foreground (default: "
                         "all; the flag alone: none)")
    sp.add_argument("--out", required=True, help="output folder (VOC layout)")

    sp = stage(sub, "coco-layout", cmd_coco_layout,
               "write a VOC-layout dataset (class-index masks) in COCO 2014 layout",
               with_dataset=False)
    sp.add_argument("--voc-root", required=True, help="VOC-layout dataset root")
    sp.add_argument("--splits", type=json_arg, required=True,
                    help="JSON {split: list file relative to the VOC root}")
    sp.add_argument("--classes", nargs="+", default=None,
                    help="class names (default: the VOC root's classes.txt)")
    sp.add_argument("--mask-dir", default="SegmentationClass")
    sp.add_argument("--crowd-every", type=int, default=0,
                    help="every k-th image's crowd region also covers its objects (0: never)")
    sp.add_argument("--polygon-every", type=int, default=0,
                    help="every k-th image's instances as polygons instead of RLE (0: never)")
    sp.add_argument("--out", required=True, help="output root (COCO 2014 layout)")
