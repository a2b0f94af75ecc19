"""Learning curves as a PNG (matplotlib, the optional extra ``gpubp[plot]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import FileWriteError, GpubpValueError, OptionalDependencyError
from .history import EnsembleHistory, History


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or a clear error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise OptionalDependencyError(
            f"plotting needs matplotlib ({error}); install it with: pip install \"gpubp[plot]\" "
            f"(or \".[plot]\" in a source checkout)"
        ) from None
    return plt


def plot_history(history: History, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write the loss and (for classifiers) accuracy curves, train and validation, per epoch, to ``path``.

    The best epoch (``history.best_epoch``) is marked. Returns the path written.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    if not isinstance(history, History) or len(history) == 0:
        raise GpubpValueError("history must be a non-empty gpubp History (what MLP.fit returns); an ensemble's "
                              "EnsembleHistory is drawn by gpubp.plot.plot_members")
    path = _png_path(path)
    keys = history.keys()
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if "accuracy" in keys else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (metric, label) in zip(axes[0], panels):
        axis.plot(history.epochs, history[metric], marker="o", markersize=3, label=f"train {label}")
        if f"val_{metric}" in keys:
            axis.plot(history.epochs, history[f"val_{metric}"], marker="o", markersize=3, label=f"validation {label}")
        if history.best_epoch is not None:
            axis.axvline(history.best_epoch, color="grey", linestyle=":", label=f"best epoch ({history.best_epoch})")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        if metric == "loss":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _png_path(path: str | os.PathLike) -> Path:
    """``path`` checked: a ``.png`` in an existing directory."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise GpubpValueError(f"path must end in .png, got {str(path)!r}")
    if not path.parent.is_dir():
        raise FileWriteError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
    return path


def plot_members(history: EnsembleHistory, path: str | os.PathLike, labels: list[str] | None = None,
                 title: str | None = None) -> Path:
    """Every member's curves of an ensemble: the validation loss (and accuracy) per epoch, or the training
    ones without validation data; one colour per distinct label (e.g. each learning rate of a sweep), so
    repeats of a setting show their spread. Returns the path written."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    if not isinstance(history, EnsembleHistory) or len(history) == 0:
        raise GpubpValueError("history must be a non-empty gpubp EnsembleHistory (what Ensemble.fit returns)")
    labels = labels if labels is not None else [f"member {k}" for k in range(history.members)]
    if len(labels) != history.members:
        raise GpubpValueError(f"labels must name each of the {history.members} members, got {len(labels)}")
    path = _png_path(path)
    prefix = "val_" if "val_loss" in history.keys() else ""
    metrics = ["loss"] + (["accuracy"] if "accuracy" in history.keys() else [])
    colours = {label: plt.cm.viridis(i / max(1, len(set(labels)) - 1)) for i, label in
               enumerate(dict.fromkeys(labels))}
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        values = history[prefix + metric]
        shown: set[str] = set()
        for k, label in enumerate(labels):
            axis.plot(history.epochs, values[:, k], color=colours[label], alpha=0.8, linewidth=1,
                      label=None if label in shown else label)
            shown.add(label)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(("validation " if prefix else "training ") + metric)
        if metric == "loss":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title or f"{history.members} members")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
