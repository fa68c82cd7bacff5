"""Training curves: one panel per training log, loss terms against step and the lr schedule."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from wsss.report.style import FigureError, legend_cols, pyplot, save

_LOG_SKIP = {"step", "epoch", "lr", "seconds"}


def _read_log(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FigureError(f"{path}: training log does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "step" not in fields:
        raise FigureError(f"{path}: training log lacks the 'step' column (has {fields})")
    if not rows:
        raise FigureError(f"{path}: training log has no rows")
    columns: dict[str, np.ndarray] = {}
    for name in fields:
        values = []
        for line, row in enumerate(rows, start=2):
            cell = (row.get(name) or "").strip()
            try:
                values.append(float(cell) if cell else np.nan)
            except ValueError:
                raise FigureError(f"{path}: line {line}, column '{name}': "
                                  f"{cell!r} is not a number") from None
        columns[name] = np.array(values)
    if np.isnan(columns["step"]).any():
        raise FigureError(f"{path}: column 'step' has empty cells")
    if not [n for n in fields if n not in _LOG_SKIP]:
        raise FigureError(f"{path}: training log has no loss column (has {fields})")
    return columns


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that skips NaN and narrows at the ends instead of padding."""
    if window <= 1:
        return values
    kernel = np.ones(window)
    ok = np.isfinite(values)
    sums = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    counts = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def training_curves(logs: list[tuple[str, str | Path]], out_png: str | Path) -> None:
    """One panel per (label, CSV log): loss terms against step, and the lr schedule.

    Every numeric column except step, epoch, lr and seconds is a loss term; `loss` (the
    total, drawn thick) comes first. Raw values are drawn faint under a short centred moving
    average, because per-step losses of small batches are too noisy to compare by eye. The
    y range follows the smoothed curves, so early spikes do not flatten the rest.
    """
    if not logs:
        raise FigureError("training_curves: no logs")
    data = [(label, Path(path), _read_log(Path(path))) for label, path in logs]
    plt = pyplot()

    n = len(data)
    n_cols = min(3, n)
    n_rows = math.ceil(n / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.9 * n_cols, 2.9 * n_rows),
                             squeeze=False, layout="constrained")
    try:
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax, (label, _, cols) in zip(axes.flat, data, strict=False):
            step = cols["step"]
            terms = [c for c in cols if c not in _LOG_SKIP]
            terms.sort(key=lambda c: c != "loss")
            window = int(np.clip(round(len(step) / 15), 1, 101)) | 1
            lows, highs = [], []
            for k, term in enumerate(terms):
                raw = cols[term]
                smooth = _smooth(raw, window)
                total = term == "loss"
                colour = "black" if total else f"C{k}"
                ax.plot(step, raw, color=colour, alpha=0.15, linewidth=0.6)
                ax.plot(step, smooth, color=colour, linewidth=1.8 if total else 1.0,
                        label=term, zorder=3 if total else 2)
                if np.isfinite(smooth).any():
                    lows.append(np.nanmin(smooth))
                    highs.append(np.nanmax(smooth))
            if highs:
                lo, hi = min(lows), max(highs)
                pad = 0.08 * (hi - lo or abs(hi) or 1.0)
                ax.set_ylim(min(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_ylabel("loss", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.spines[["top"]].set_visible(False)
            ax.grid(linewidth=0.4, alpha=0.5)
            handles, names = ax.get_legend_handles_labels()
            if "lr" in cols and np.isfinite(cols["lr"]).any():
                twin = ax.twinx()
                (lr_line,) = twin.plot(step, cols["lr"], color="#999999", linestyle="--",
                                       linewidth=0.9, label="lr (right)")
                twin.set_ylim(0, np.nanmax(cols["lr"]) * 1.05 or 1.0)
                twin.tick_params(labelsize=7, colors="#777777")
                twin.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
                twin.yaxis.get_offset_text().set_fontsize(7)
                twin.spines[["top"]].set_visible(False)
                handles.append(lr_line)
                names.append("lr (right)")
            ax.legend(handles, names, fontsize=7, frameon=False, loc="upper center",
                      bbox_to_anchor=(0.5, -0.22), ncols=legend_cols(names, 3.9),
                      handlelength=1.5, columnspacing=1.0)
    except BaseException:
        plt.close(fig)
        raise
    save(fig, out_png)
