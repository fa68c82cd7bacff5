"""`wsss crf`: dense-CRF refinement of CAMs into pseudo-labels."""

from __future__ import annotations

from wsss.cli.common import add_shard, dataset, json_arg, stage, threads


def cmd_crf(args) -> None:
    from wsss.refine.crf import run_crf

    run_crf(args.cams, dataset(args.dataset, args.shard), args.split, args.config, args.out,
            threads=threads(args), seeds_eval=args.seeds_eval)


def add_commands(sub) -> None:
    sp = stage(sub, "crf", cmd_crf, "dense-CRF refinement of CAMs into pseudo-labels")
    sp.add_argument("--cams", required=True)
    sp.add_argument("--split", required=True)
    sp.add_argument("--config", type=json_arg, required=True, help="refiner block as JSON")
    sp.add_argument("--seeds-eval", default=None,
                    help="seed evaluation JSON whose best threshold sets the background plane")
    sp.add_argument("--out", required=True)
    add_shard(sp)
