"""`wsss` command line: one subcommand per workflow stage.

Each module of this package holds the subcommands of one stage, each argument list next to its
handler (`add_commands(sub)`); a handler parses, calls one stage function and logs. Stage logic
lives in the stage modules, not here. Configuration blocks arrive as JSON strings (the workflow
passes each variant's whole block), so a stage can also be run by hand outside Snakemake.

The modules are found by listing this package, so adding a stage does not edit this file, and
a rule's code inputs (its command module's imports) do not include the other stages.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

log = logging.getLogger("wsss")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        importlib.import_module(f"{__name__}.{info.name}").add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    from wsss.data.voc import DatasetError
    from wsss.errors import ConfigError, TrainingError
    from wsss.store import StoreError, WriteError

    try:
        args.fn(args)
    except (DatasetError, StoreError, WriteError, ConfigError, TrainingError,
            ValueError) as err:
        log.error("%s", err)
        print(f"wsss {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
