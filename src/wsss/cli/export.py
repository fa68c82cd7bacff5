"""`wsss export-png`: a label store as VOC palette PNGs."""

from __future__ import annotations

import logging

from wsss.cli.common import stage

log = logging.getLogger("wsss")


def cmd_export_png(args) -> None:
    from wsss.data.voc import export_pngs

    n = export_pngs(args.labels, args.out)
    log.info("wrote %d PNGs to %s", n, args.out)


def add_commands(sub) -> None:
    sp = stage(sub, "export-png", cmd_export_png, "write a label HDF5 as VOC palette PNGs",
               with_dataset=False)
    sp.add_argument("--labels", required=True)
    sp.add_argument("--out", required=True)
