"""Fixed places of the workflow's shared files, readable without torch (Snakemake's parse
time and every job agree on them through this module)."""

from __future__ import annotations

from pathlib import Path

# The pretrain stage's weights (`pretrained: synthetic` in a backbone block): one file per
# backbone, shared by every dataset and variant, relative to the workflow's directory (where
# Snakemake runs its jobs).
PRETRAINED_DIR = Path("results/pretrained")
SYNTHETIC = "synthetic"


def pretrained_path(name: str) -> Path:
    """Where the pretrain stage writes backbone `name`'s weights."""
    return PRETRAINED_DIR / f"{name}.pt"
