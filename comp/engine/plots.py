"""Training curves: a fold's accuracy and loss per epoch as a PNG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from comp.core.fileio import save_figure


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    if frame.empty:
        return
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, ax in (("accuracy", ax_acc), ("loss", ax_loss)):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in frame:
                ax.plot(frame["epoch"], frame[prefix + key], style, label=("val " if prefix else "train ") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(path, fig)
    plt.close(fig)
