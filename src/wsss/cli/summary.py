"""`wsss summary`: the variants x stages table and the mIoU bar chart."""

from __future__ import annotations

from wsss.cli.common import stage


def cmd_summary(args) -> None:
    from wsss.report.summary import write_summary

    write_summary(args.evals, args.csv, args.md, args.png, title=args.title,
                  diagnostics=args.diagnostics)


def add_commands(sub) -> None:
    sp = stage(sub, "summary", cmd_summary, "summary table (csv, md) and bar chart of evaluations",
               with_dataset=False)
    sp.add_argument("--evals", nargs="+", required=True)
    sp.add_argument("--csv", required=True)
    sp.add_argument("--md", required=True)
    sp.add_argument("--png", required=True)
    sp.add_argument("--diagnostics", nargs="*", default=[], help="failure-mode JSON files")
    sp.add_argument("--title", default="")
