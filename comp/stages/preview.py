"""`comp data augment-preview`: a grid of augmented (and mixed) training images, labelled."""

from __future__ import annotations

import numpy as np

from comp.core.errors import CompError
from comp.config.augment_presets import LABEL_MIN_WEIGHT
from comp.engine.augment import make_augment_layer, make_mix_layer
from comp.data.sources import workdir_dataset
from comp.store.runs import load_run, run_names
from comp.core.fileio import save_figure


def mix_label(weights, classes: list[str], top: int = 2) -> str:
    """A cell's label from its (soft) target row: the class name, or under mixup/cutmix the `top`
    heaviest classes with their weights, heaviest first ("cat .62 / dog .38")."""
    weights = np.asarray(weights, dtype=float)
    order = [int(i) for i in np.argsort(-weights, kind="stable")[:top] if weights[i] >= LABEL_MIN_WEIGHT]
    if len(order) <= 1 or weights[order[0]] >= 1.0 - LABEL_MIN_WEIGHT:
        return classes[order[0]] if order else classes[int(np.argmax(weights))]
    return " / ".join(f"{classes[i]} " + f"{weights[i]:.2f}".lstrip("0") for i in order)


def preview_grid(dataset, preset: str, mixup: float, cutmix: float, out_path, seed: int = 0,
                 rows: int = 6, cols: int = 6, title: str = ""):
    """Write a PNG: the first column holds originals, the others augmented (and mixed) copies, each
    cell titled with its class, or the classes it was mixed from with their weights."""
    import keras
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset.train_x), size=min(rows, len(dataset.train_x)), replace=False)
    rows = len(chosen)
    images = np.asarray(dataset.train_x[chosen]).astype("float32")
    labels = np.asarray(dataset.train_y)[chosen]
    # Multi-label rows are their multi-hot targets already; class numbers become one-hot rows.
    targets = labels.astype("float32") if labels.ndim == 2 else np.eye(dataset.num_classes, dtype="float32")[labels]
    augment = make_augment_layer(preset, seed)  # one step per "epoch": alternating flips alternate per column
    mix = make_mix_layer(mixup, cutmix, seed)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.75), squeeze=False)
    for c in range(cols):
        batch, soft = (images, targets) if c == 0 else mix(augment(images, training=True), targets, training=True)
        batch = np.clip(keras.ops.convert_to_numpy(batch), 0, 255).astype(np.uint8)
        soft = keras.ops.convert_to_numpy(soft)
        for r in range(rows):
            axes[r, c].imshow(batch[r].squeeze(), cmap="gray" if batch.shape[-1] == 1 else None)
            label = mix_label(soft[r], dataset.classes)
            axes[r, c].set_title(f"original: {label}" if c == 0 else label, fontsize=6)
            axes[r, c].axis("off")
    fig.suptitle(title or f"augment={preset} mixup={mixup} cutmix={cutmix}", fontsize=9)
    fig.tight_layout()
    save_figure(out_path, fig)
    plt.close(fig)
    return out_path


def preview_run(workspace, run_name: str, out_path, seed: int = 0, limit: int = 0):
    """preview_grid with a run's own augmentation: its augment, mixup and cutmix, on the data at
    its image size and resize mode. An unknown run is a CompError naming it and `comp report`."""
    try:
        run = load_run(workspace, run_name)
    except CompError:
        known = ", ".join(run_names(workspace)) or "none yet"
        raise CompError(f"--run {run_name}: no such run under {workspace.folds}; `comp report` lists the runs "
                        f"(here: {known})") from None
    config = run.config
    dataset = workdir_dataset(workspace, limit, run.image_size, run.resize)
    augment, mixup, cutmix = config.get("augment", "none"), config.get("mixup", 0.0), config.get("cutmix", 0.0)
    title = f"run {run.name}: augment={augment} mixup={mixup} cutmix={cutmix} at {run.image_size}"
    return preview_grid(dataset, augment, mixup, cutmix, out_path, seed, title=title)
