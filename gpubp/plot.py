"""Learning curves as a PNG (matplotlib, the optional extra ``gpubp[plot]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import FileWriteError, GpubpValueError, OptionalDependencyError
from .history import History


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
        raise GpubpValueError("history must be a non-empty gpubp History (what MLP.fit returns)")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise GpubpValueError(f"path must end in .png, got {str(path)!r}")
    if not path.parent.is_dir():
        raise FileWriteError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} does not exist")
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
