"""Training curves and confusion matrices as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: dict[str, list[float]], head_names: Sequence[str],
                 out_dir: str | Path, best_epoch: int | None = None) -> list[Path]:
    """``losses.png``: total then per-head loss (stacked); ``accuracy.png``: one panel per head,
    then validation exact match when it was scored.

    Train curves are solid, validation dashed; epochs are whole numbers from 1; ``best_epoch``
    (1-based, the one the bundle keeps) is marked with a dotted line.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    out_dir = Path(out_dir)
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    written = []
    for filename, keys, titles in (
        ("losses.png", ["loss"] + [f"{h}_output_loss" for h in head_names],
         ["total loss"] + [f"{h} loss" for h in head_names]),
        ("accuracy.png", [f"{h}_output_accuracy" for h in head_names]
         + (["exact_match"] if "val_exact_match" in history else []),
         [f"{h} accuracy" for h in head_names] + ["exact match (all heads right)"]),
    ):
        fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), squeeze=False)
        for ax, key, title in zip(axes[:, 0], keys, titles):
            if key in history:
                ax.plot(epochs, history[key], label="train")
            if f"val_{key}" in history:
                ax.plot(epochs, history[f"val_{key}"], "--", label="validation")
            if best_epoch is not None:
                ax.axvline(best_epoch, color="gray", linestyle=":",
                           label=f"kept: epoch {best_epoch}")
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(loc="best")
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], title: str,
                   path: str | Path) -> Path:
    """A confusion matrix, rows are true classes: counts on the left, and on the right each
    row as shares of its true class (row-normalised: a rare class's errors are as visible as a
    common one's)."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape, float), where=totals > 0)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, values, text, name in (
            (axes[0], matrix, lambda v: str(int(v)), "counts"),
            (axes[1], shares, lambda v: f"{100 * v:.0f}%", "share of each true class")):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        peak = values.max() if values.size else 0
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, text(value), ha="center", va="center",
                    color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return Path(path) if isinstance(path, (str, Path)) else path


def plot_risk_coverage(curves: dict[str, dict], path: str | Path) -> Path:
    """Per head, the error rate on what is answered against the share answered, answering the
    most familiar images first; a dot marks where the head's threshold sits."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, entry in curves.items():
        curve = entry["risk_coverage"]
        line, = ax.plot(curve["coverage"], [100 * r for r in curve["risk"]], label=name)
        ax.plot([entry["answered"]], [100 * (1 - entry["accuracy_answered"])], "o",
                color=line.get_color())
    ax.set_xlabel("share of images answered (coverage)")
    ax.set_ylabel("errors among answered (%)")
    ax.set_title("risk-coverage (dot: the bundle's threshold)")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return Path(path) if isinstance(path, (str, Path)) else path
