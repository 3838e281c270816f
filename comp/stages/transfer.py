"""`comp transfer ...`: the transfer-learning study track, kept apart from submissions.

The main track trains from scratch. This track answers "how much would a pretrained backbone
have given?" with the 14 Keras Applications backbones below:

    comp transfer compare   every backbone frozen, a new head trained, all on one holdout split
    comp transfer finetune  one backbone: train the head, then unfreeze the top of the base

Everything lands in <workdir>/studies/<name>/, never in folds/ or submissions/, and every run's
config.json says "pretrained": true so the ensemble stage can refuse it.

The one trap of this track: some backbones rescale pixels themselves (EfficientNet and
MobileNetV3 start with a Rescaling layer and expect 0-255), others expect their inputs already
mapped to [-1, 1], to ImageNet mean-subtracted BGR, or to ImageNet-standardised values. Feeding
[0, 1] images to EfficientNet left it at chance accuracy in a classic study. So the model takes
raw 0-255 pixels and applies the backbone's own `preprocess_input` inside its graph; the
BACKBONES table below is the one place that decides which function that is.
"""

from __future__ import annotations

import difflib
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from comp.core.console import console, info
from comp.core.errors import CompError, one_line
from comp.core.fileio import read_json, save_csv, save_figure, save_npy, write_json
from comp.data.folds import parse_fold_selection
from comp.engine.inference import predict_outputs
from comp.core.scoring import accuracy, log_loss
from comp.data.sources import workdir_dataset

DEFAULT_SEED = 42
STUDY_FILE = "study.json"  # a study's settings; a K-fold fine-tuning run also writes a run manifest
VAL_FRACTION = 0.2  # the holdout split: 80% train, 20% validation
HEAD_DROPOUT = 0.2  # between the pooled features and the new classifier, as in the Keras transfer guide
HEAD_LR = 1e-3  # the new head starts from random weights and needs an ordinary learning rate
FINETUNE_LR = 1e-4  # unfrozen pretrained layers need a small one, or the first steps wreck them
SGD_MOMENTUM = 0.9
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Backbone:
    """One Keras Applications backbone and the facts needed to use it correctly."""

    name: str  # constructor in keras.applications
    module: str  # keras.applications submodule whose preprocess_input this backbone needs
    min_size: int  # smallest input height/width the constructor accepts
    unfreeze_from: str  # default first layer fine-tuning unfreezes (start of the last stage)
    weights_file: str  # the no-top ImageNet file Keras caches in ~/.keras/models


# Minimum sizes are the `min_size` each constructor checks (keras/src/applications/*.py).
# `unfreeze_from` is the first layer of the last, coarsest-resolution stage of each network,
# so fine-tuning retrains the most task-specific features and keeps the generic early ones.
# Preprocessing, by `module`:
#   efficientnet, mobilenet_v3        nothing: the model rescales 0-255 itself
#   mobilenet_v2, resnet_v2,
#   inception_v3, xception            "tf": x / 127.5 - 1, into [-1, 1]
#   resnet50, vgg16, vgg19            "caffe": RGB -> BGR, minus the ImageNet mean, no scaling
#   densenet                          "torch": x / 255, minus the ImageNet mean, over its std
BACKBONES = {b.name: b for b in (
    Backbone("DenseNet121", "densenet", 32, "conv5_block1_0_bn",
             "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("DenseNet169", "densenet", 32, "conv5_block1_0_bn",
             "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("DenseNet201", "densenet", 32, "conv5_block1_0_bn",
             "densenet201_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("EfficientNetB0", "efficientnet", 32, "block6a_expand_conv", "efficientnetb0_notop.h5"),
    Backbone("EfficientNetB1", "efficientnet", 32, "block6a_expand_conv", "efficientnetb1_notop.h5"),
    Backbone("InceptionV3", "inception_v3", 75, "mixed8",
             "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    # Keras loads the 224-pixel MobileNet weights for any input size it has no file for.
    Backbone("MobileNetV2", "mobilenet_v2", 32, "block_13_expand",
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    Backbone("MobileNetV3Large", "mobilenet_v3", 32, "expanded_conv_12_expand",
             "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    Backbone("ResNet50", "resnet50", 32, "conv5_block1_1_conv",
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("ResNet50V2", "resnet_v2", 32, "conv5_block1_preact_bn",
             "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("ResNet152V2", "resnet_v2", 32, "conv5_block1_preact_bn",
             "resnet152v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("VGG16", "vgg16", 32, "block5_conv1", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("VGG19", "vgg19", 32, "block5_conv1", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("Xception", "xception", 71, "block14_sepconv1",
             "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
)}

# The comparison table and CSV: (CSV column, table header, how the table shows a value).
RESULT_COLUMNS = (
    ("backbone", "backbone", str),
    ("input_size", "input", str),
    ("params", "params\n(M)", lambda v: f"{v / 1e6:.2f}"),
    ("trainable_params", "trainable", "{:,}".format),
    ("train_accuracy", "train\nacc", "{:.3f}".format),
    ("train_loss", "train\nloss", "{:.3f}".format),
    ("val_accuracy", "val\nacc", "{:.3f}".format),
    ("val_loss", "val\nloss", "{:.3f}".format),
    ("seconds_per_epoch", "s per\nepoch", "{:.1f}".format),
    ("total_seconds", "total\ns", "{:.0f}".format),
)


# -- reading the options -------------------------------------------------------------------


def parse_backbones(text: str) -> list[Backbone]:
    """`all` or a comma-separated list; names match case-insensitively (resnet50v2 works)."""
    if text.strip().lower() == "all":
        return list(BACKBONES.values())
    by_lower = {name.lower(): backbone for name, backbone in BACKBONES.items()}
    chosen = []
    for name in (part.strip() for part in text.split(",") if part.strip()):
        if name.lower() not in by_lower:
            raise CompError(f"--backbones {name}: unknown backbone; choose from all, {', '.join(BACKBONES)}")
        if by_lower[name.lower()] not in chosen:
            chosen.append(by_lower[name.lower()])
    if not chosen:
        raise CompError(f"--backbones: empty; name some of {', '.join(BACKBONES)} or use all")
    return chosen


def resolve_weights(text: str) -> str:
    """"imagenet", "none" (random init) or the absolute path of an existing .h5 file."""
    if text in ("imagenet", "none"):
        return text
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise CompError(f"--weights {text}: no such file; pass imagenet, none, or a .h5/.weights.h5 file")
    if not path.name.endswith(".h5"):
        raise CompError(f"--weights {text}: not a .h5 file; Keras loads backbone weights from .h5/.weights.h5 files")
    return str(path)


def check_name(name: str) -> str:
    """A study name is one folder under studies/, nothing that could escape it."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CompError(f"--name {name!r}: use a plain folder name such as compare-1")
    return name


def check_at_least(option: str, value: int, smallest: int) -> int:
    if value < smallest:
        raise CompError(f"{option} {value}: must be at least {smallest}")
    return value


# -- the model -----------------------------------------------------------------------------


def preprocess_function(backbone: Backbone):
    """The backbone's own `keras.applications.<module>.preprocess_input`."""
    import keras

    return getattr(keras.applications, backbone.module).preprocess_input


def input_size(backbone: Backbone, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Images smaller than the backbone's minimum are upsampled to it; larger ones stay as they are."""
    height, width = image_shape[:2]
    return max(height, backbone.min_size), max(width, backbone.min_size)


def input_pipeline(backbone: Backbone, image_shape: tuple[int, int, int]):
    """(inputs, preprocessed tensor): raw 0-255 pixels in, what the backbone expects out.

    Upsampling and preprocessing happen inside the model, so every caller (fit, predict, a
    test) feeds the same uint8 arrays and cannot forget or double a step.
    """
    import keras

    inputs = keras.Input(shape=image_shape, name="pixels_0_255")
    x = inputs
    if image_shape[-1] == 1:  # grayscale (a pixel CSV): the pretrained backbones take RGB
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    size = input_size(backbone, image_shape)
    if size != tuple(image_shape[:2]):
        x = keras.layers.Resizing(*size, interpolation="bilinear", name="upsample")(x)
    x = keras.layers.Lambda(preprocess_function(backbone), name="preprocess")(x)
    return inputs, x


def keras_models_dir() -> Path:
    """Where Keras caches downloaded weights ($KERAS_HOME/models, else ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def describe_error(err: Exception, limit: int = 160) -> str:
    """`Type: message` on one line, short enough to sit inside a CompError's sentence."""
    return one_line(f"{type(err).__name__}: {err}", limit)


def download_error(backbone: Backbone, err: Exception) -> CompError:
    """Explain a failed ImageNet download: which file to put where, or which option to use instead."""
    # Keras's message names the URL it tried, whose last part is the exact file it wants
    # (MobileNets pick theirs by input size); the table's name is the fallback.
    url = re.search(r"https?://\S+?\.h5\b", str(err))
    file_name = url.group(0).rsplit("/", 1)[-1] if url else backbone.weights_file
    source = f" (download it from {url.group(0)} on a connected machine)" if url else ""
    return CompError(
        f"{backbone.name}: could not get the ImageNet weights ({describe_error(err)}); "
        f"to work offline, put {file_name} in {keras_models_dir()}/{source}, "
        f"or pass --weights PATH with a .h5 file, or --weights none for random initialisation"
    )


def build_base(backbone: Backbone, weights: str, size: tuple[int, int]):
    """The headless backbone with global average pooling, its weights loaded."""
    import keras

    constructor = getattr(keras.applications, backbone.name)
    shape = (*size, 3)
    if weights == "imagenet":
        try:
            with warnings.catch_warnings():
                # Keras warns that our (minimum) input size is not the one the weights were made at:
                # known and intended, since images are upsampled to each backbone's minimum size.
                warnings.simplefilter("ignore", UserWarning)
                return constructor(include_top=False, weights="imagenet", input_shape=shape, pooling="avg")
        except Exception as err:  # urllib, ssl and hash-check errors all mean "could not get the file"
            raise download_error(backbone, err) from None
    base = constructor(include_top=False, weights=None, input_shape=shape, pooling="avg")
    if weights != "none":
        try:
            base.load_weights(weights)
        except Exception as err:  # h5py and Keras raise several types for a file that does not fit
            raise CompError(
                f"--weights {weights}: does not fit {backbone.name} without its top "
                f"({describe_error(err)}); use a no-top weights file of this backbone"
            ) from None
    return base


def build_transfer_model(backbone: Backbone, weights: str, image_shape, num_classes: int):
    """(model, base): raw pixels -> upsample -> preprocess -> frozen base -> dropout -> softmax."""
    import keras

    inputs, x = input_pipeline(backbone, image_shape)
    base = build_base(backbone, weights, input_size(backbone, image_shape))
    base.trainable = False
    # training=False keeps the base's BatchNorm layers on their ImageNet statistics even when
    # layers are unfrozen later: updating them from small batches of new data ruins the features.
    x = base(x, training=False)
    x = keras.layers.Dropout(HEAD_DROPOUT, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=f"transfer_{backbone.name}"), base


def make_transfer_optimizer(name: str, learning_rate: float):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=SGD_MOMENTUM)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def compile_model(model, optimizer: str, learning_rate: float) -> None:
    model.compile(optimizer=make_transfer_optimizer(optimizer, learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def unfreeze_index(base, backbone: Backbone, layer_name: str) -> int:
    """Position of `layer_name` in the base; a CompError suggesting real names if there is none."""
    names = [layer.name for layer in base.layers]
    if layer_name in names:
        return names.index(layer_name)
    # Names that look like the typo, else a few from the top quarter, where fine-tuning starts.
    close = difflib.get_close_matches(layer_name, names, n=3, cutoff=0.6)
    top_quarter = names[len(names) * 3 // 4:]
    examples = close or top_quarter[::max(1, len(top_quarter) // 3)][:3]
    raise CompError(
        f"--unfreeze-from {layer_name}: {backbone.name} has no such layer; try {', '.join(examples)} "
        f"(default {backbone.unfreeze_from}; keras.applications.{backbone.name}(include_top=False).summary() "
        "lists them all)"
    )


def unfreeze_top(base, start: int) -> int:
    """Make the base's layers from `start` on trainable, except BatchNorm.

    Returns how many layers with weights now train (the number the log line reports).
    """
    import keras

    base.trainable = True  # switches every layer on; the loop below switches most back off
    unfrozen = 0
    for index, layer in enumerate(base.layers):
        is_batchnorm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and not is_batchnorm
        unfrozen += layer.trainable and bool(layer.weights)
    return unfrozen


def count_params(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


# -- splits --------------------------------------------------------------------------------


def holdout_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One stratified 80/20 split: (train rows, val rows), the same for every backbone."""
    from sklearn.model_selection import StratifiedShuffleSplit

    splitter = StratifiedShuffleSplit(n_splits=1, test_size=VAL_FRACTION, random_state=seed)
    try:
        train_rows, val_rows = next(splitter.split(np.zeros(len(labels)), labels))
    except ValueError as err:
        raise CompError(f"cannot split {len(labels)} images into train and validation ({err}); use more data") from None
    return np.sort(train_rows), np.sort(val_rows)


# -- training ------------------------------------------------------------------------------


def epoch_logger(label: str, seconds: list[float]):
    """A callback printing one line per epoch and recording how long each took."""
    import keras

    started = {}

    def begin(epoch, logs=None):
        started["at"] = time.perf_counter()

    def end(epoch, logs=None):
        seconds.append(time.perf_counter() - started["at"])
        logs = logs or {}
        info(f"  {label} epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.3f} "
             f"acc {logs.get('accuracy', float('nan')):.3f}  val loss {logs.get('val_loss', float('nan')):.3f} "
             f"val acc {logs.get('val_accuracy', float('nan')):.3f}  ({seconds[-1]:.1f} s)")

    return keras.callbacks.LambdaCallback(on_epoch_begin=begin, on_epoch_end=end)


def fit(model, dataset, train_rows, val_rows, epochs: int, batch_size: int, label: str) -> dict:
    """Train; returns the last epoch's metrics and the seconds each epoch took (validation included)."""
    seconds: list[float] = []
    history = model.fit(
        dataset.train_x[train_rows], dataset.train_y[train_rows],
        validation_data=(dataset.train_x[val_rows], dataset.train_y[val_rows]),
        epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[epoch_logger(label, seconds)],
    )
    last = {key: float(values[-1]) for key, values in history.history.items()}
    return {"train_accuracy": last["accuracy"], "train_loss": last["loss"],
            "val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"], "epoch_seconds": seconds}


def start_model(seed: int) -> None:
    """Before each model: free the previous one's graph (memory stays flat) and reseed."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)


# -- the study folder ----------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneSettings:
    """What a fine-tuning study trains: one backbone, two stages (head, then the unfrozen top)."""

    backbone: str = "ResNet50V2"
    weights: str = "imagenet"  # imagenet | none | path of a no-top .h5 file
    unfreeze_from: str | None = None  # None: the backbone's default (start of its last stage)
    epochs_head: int = 5
    epochs: int = 10
    optimizer: str = "adam"
    lr: float = FINETUNE_LR
    batch_size: int = 64
    seed: int = DEFAULT_SEED


def study_record(dataset, weights: str, seed: int, study: str, batch_size: int) -> dict:
    """What every study records: enough to tell it from a submission run and to redo it."""
    return {
        # Marks every study of this track, whatever the weights: the ensemble stage refuses any
        # run carrying it (unless --allow-pretrained), so studies never leak into submissions.
        "pretrained": True,
        "study": study,
        "weights": weights,
        "data_fingerprint": dataset.fingerprint,
        "classes": dataset.classes,
        "image_shape": list(dataset.image_shape),
        "limit": dataset.limit,
        "seed": seed,
        "batch_size": batch_size,
    }


def check_same_study(folder: Path, config: dict, has_results: bool, free_keys: tuple[str, ...] = ()) -> dict:
    """The earlier run's config.json ({} if none); a CompError if its results came from other settings.

    Rerunning a study resumes it (finished backbones and folds are kept), which is only
    right when nothing that changes the results differs. A study that stopped before its
    first result (say, the weights download failed) holds nothing to mix, so it is simply
    started again. Keys in `free_keys` may differ (compare may add backbones to a study).
    """
    path = folder / STUDY_FILE
    if not (has_results and path.exists()):
        return {}
    old = read_json(path)
    for key, value in config.items():
        if key not in free_keys and old.get(key) != value:
            raise CompError(
                f"{path}: this study was run with {key} = {old.get(key)!r}, now {value!r}; "
                f"pass another --name, or delete {folder} to start over"
            )
    return old


# -- comp transfer compare -----------------------------------------------------------------


def compare_one(backbone: Backbone, dataset, split, weights: str, epochs: int, batch_size: int, seed: int) -> dict:
    """Frozen base + new head, trained on the shared split; one row of the comparison."""
    start_model(seed)
    started = time.perf_counter()
    size = input_size(backbone, dataset.image_shape)
    info(f"[bold]{backbone.name}[/bold] at {size[0]}x{size[1]}, weights {Path(weights).name}")
    model, _ = build_transfer_model(backbone, weights, dataset.image_shape, dataset.num_classes)
    compile_model(model, "adam", HEAD_LR)
    result = fit(model, dataset, *split, epochs, batch_size, backbone.name)
    seconds = result.pop("epoch_seconds")
    return {
        "backbone": backbone.name,
        "input_size": f"{size[0]}x{size[1]}",
        "params": count_params(model.weights),
        "trainable_params": count_params(model.trainable_weights),
        **result,
        # The first epoch also traces the graph, so it is slower; the mean includes it.
        "seconds_per_epoch": float(np.mean(seconds)),
        "total_seconds": time.perf_counter() - started,
    }


def read_done_rows(csv_path: Path) -> list[dict]:
    """Rows of an earlier, interrupted or extended run of the same study."""
    if not csv_path.exists():
        return []
    import pandas as pd

    return pd.read_csv(csv_path).to_dict("records")


def results_table(rows: list[dict], title: str):
    from rich import box
    from rich.table import Table

    # No borders or padding: ten columns of a 14-row study then fit an 80-column terminal.
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False)
    for _, header, _ in RESULT_COLUMNS:
        table.add_column(header, justify="left" if header == "backbone" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(show(row[key]) for key, _, show in RESULT_COLUMNS))
    return table


def comparison_plot(rows: list[dict], num_classes: int, weights: str, path: Path) -> Path:
    """Accuracy (with the chance line, where a mis-preprocessed backbone sits) and time per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["backbone"] for row in rows]
    positions = np.arange(len(rows))
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.8), sharey=True)
    height = 0.4
    acc_ax.barh(positions - height / 2, [r["train_accuracy"] for r in rows], height, label="train")
    acc_ax.barh(positions + height / 2, [r["val_accuracy"] for r in rows], height, label="val")
    acc_ax.axvline(1.0 / num_classes, color="grey", linestyle="--", label="chance")
    acc_ax.set_xlim(0, 1)
    acc_ax.set_xlabel("accuracy")
    acc_ax.set_yticks(positions, names)
    acc_ax.invert_yaxis()
    acc_ax.legend(loc="lower right", fontsize=8)
    time_ax.barh(positions, [r["seconds_per_epoch"] for r in rows], color="tab:green")
    time_ax.set_xlabel("seconds per epoch")
    fig.suptitle(f"frozen backbone + new head, same holdout split, weights {Path(weights).name}")
    save_figure(path, fig)
    plt.close(fig)
    return path


def compare(workspace, backbones: str = "all", weights: str = "imagenet", epochs: int = 3, batch_size: int = 64,
            name: str = "compare", seed: int | None = None) -> list[dict]:
    """Every chosen backbone frozen, a new head trained, all on one holdout split: a row each."""
    chosen = parse_backbones(backbones)
    weights = resolve_weights(weights)
    name = check_name(name)
    epochs = check_at_least("--epochs", epochs, 1)
    check_at_least("--batch-size", batch_size, 1)
    seed = seed or DEFAULT_SEED
    dataset = single_label(workdir_dataset(workspace))
    folder = workspace.studies / name
    config = study_record(dataset, weights, seed, "compare", batch_size) | {
        "epochs": epochs, "val_fraction": VAL_FRACTION, "backbones": [b.name for b in chosen]}
    csv_path = folder / "results.csv"
    earlier = check_same_study(folder, config, csv_path.exists(), free_keys=("backbones",))
    config["backbones"] = list(dict.fromkeys([*earlier.get("backbones", []), *config["backbones"]]))
    write_json(folder / STUDY_FILE, config)

    split = holdout_split(dataset.train_y, seed)
    info(f"study {folder}: {len(split[0]):,} train / {len(split[1]):,} val images, {epochs} epoch(s) per backbone")
    rows = read_done_rows(csv_path)
    done = {row["backbone"] for row in rows}
    for backbone in chosen:
        if backbone.name in done:
            info(f"{backbone.name}: done earlier in this study, kept")
            continue
        rows.append(compare_one(backbone, dataset, split, weights, epochs, batch_size, seed))
        save_csv(csv_path, _frame(rows))  # after each backbone, so an interrupted study resumes
    rows.sort(key=lambda row: list(BACKBONES).index(row["backbone"]))
    save_csv(csv_path, _frame(rows))
    console.print(results_table(rows, f"{name}: frozen backbones, weights {Path(weights).name}"))
    plot = comparison_plot(rows, dataset.num_classes, weights, folder / "comparison.png")
    info(f"results: {csv_path}\nplot: {plot}")
    return rows


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows, columns=[key for key, _, _ in RESULT_COLUMNS])


# -- comp transfer finetune ----------------------------------------------------------------


def single_label(dataset):
    """The dataset, refused when multi-label: the transfer heads end in a softmax over classes."""
    if dataset.multilabel:
        raise CompError(f"{dataset.data_dir}: multi-label targets (several labels a row); the transfer track "
                        "trains one label a row: use comp train")
    return dataset


def finetune_fold(backbone: Backbone, dataset, split, settings: FinetuneSettings, label: str):
    """Stage 1: new head on the frozen base. Stage 2: unfreeze the top, retrain at a low rate.

    Returns (val probabilities, test probabilities, metrics).
    """
    start_model(settings.seed)
    started = time.perf_counter()
    model, base = build_transfer_model(backbone, settings.weights, dataset.image_shape, dataset.num_classes)
    layer = settings.unfreeze_from or backbone.unfreeze_from
    start = unfreeze_index(base, backbone, layer)  # before any training: a typo costs nothing

    compile_model(model, "adam", HEAD_LR)
    head = fit(model, dataset, *split, settings.epochs_head, settings.batch_size, f"{label} head")

    tuned, unfrozen = None, 0
    if settings.epochs:  # epochs 0: the frozen-base result alone, as a baseline
        unfrozen = unfreeze_top(base, start)
        compile_model(model, settings.optimizer, settings.lr)  # recompiling makes the new trainable set take effect
        info(f"  {label}: unfroze {unfrozen} layer(s) from {layer}; BatchNorm stays frozen; lr {settings.lr:g}")
        tuned = fit(model, dataset, *split, settings.epochs, settings.batch_size, f"{label} finetune")

    train_rows, val_rows = split
    val_probs = predict_outputs(model, dataset.train_x[val_rows], settings.batch_size)  # the head ends in softmax
    test_probs = predict_outputs(model, dataset.test_x, settings.batch_size)
    val_labels = dataset.train_y[val_rows]
    val_accuracy, val_loss = accuracy(val_probs, val_labels), log_loss(val_probs, val_labels)
    seconds = time.perf_counter() - started
    metrics = {
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "head_val_accuracy": head["val_accuracy"],
        "train_accuracy": (tuned or head)["train_accuracy"],
        "train_loss": (tuned or head)["train_loss"],
        "unfreeze_from": layer,
        "unfrozen_layers": unfrozen,
        "trainable_params": count_params(model.trainable_weights),
        "train_images": len(train_rows),
        "val_images": len(val_rows),
        "seconds_per_epoch": float(np.mean(head["epoch_seconds"] + (tuned or {}).get("epoch_seconds", []))),
        "total_seconds": seconds,
        # The names every K-fold run's metrics.json carries (comp.stages.train's table and summary read them).
        "best_epoch": settings.epochs_head + settings.epochs,
        "epochs_run": settings.epochs_head + settings.epochs,
        "seconds": seconds,
    }
    return val_probs, test_probs, metrics


def write_fold(folder: Path, val_probs, test_probs, metrics: dict) -> None:
    """Probabilities first, metrics.json last: its presence means the fold is complete."""
    save_npy(folder / "val_probs.npy", val_probs.astype(np.float32))
    save_npy(folder / "test_probs.npy", test_probs.astype(np.float32))
    write_json(folder / "metrics.json", metrics)


def finetune_table(results: list[tuple[str, dict]], title: str):
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False)
    for header in ("fold", "head\nval acc", "val\nacc", "val\nloss", "train\nacc", "trainable", "s per\nepoch",
                   "total\ns"):
        table.add_column(header, justify="left" if header == "fold" else "right", no_wrap=True)
    for label, m in results:
        table.add_row(label, f"{m['head_val_accuracy']:.3f}", f"{m['val_accuracy']:.3f}", f"{m['val_loss']:.3f}",
                      f"{m['train_accuracy']:.3f}", f"{m['trainable_params']:,}", f"{m['seconds_per_epoch']:.1f}",
                      f"{m['total_seconds']:.1f}")
    return table


def finetune(workspace, settings: FinetuneSettings, folds: int = 0, fold="all", name: str | None = None,
             limit: int = 0) -> dict:
    """Fine-tune one backbone: on one holdout split, or (folds=K) on the workspace's K-fold split as a
    run of kind "transfer" with out-of-fold predictions, like comp train's runs. The study's folder."""
    from comp.data.sources import apply_limit
    from comp.data.folds import ensure_split
    from comp.store.runs import make_manifest
    from comp.stages.train import run_folds, summarize_run

    backbone = parse_backbones(settings.backbone)
    if len(backbone) != 1:
        raise CompError(f"--backbone {settings.backbone}: fine-tune one backbone at a time (compare ranks several)")
    backbone = backbone[0]
    settings = FinetuneSettings(**{**asdict(settings), "backbone": backbone.name,
                                   "weights": resolve_weights(settings.weights),
                                   "unfreeze_from": settings.unfreeze_from or backbone.unfreeze_from})
    name = check_name(name or f"finetune-{backbone.name.lower()}")
    check_at_least("--epochs-head", settings.epochs_head, 1)
    check_at_least("--epochs", settings.epochs, 0)
    check_at_least("--batch-size", settings.batch_size, 1)
    if folds:
        check_at_least("--folds", folds, 2)
    elif fold != "all":
        raise CompError(f"--fold {fold}: needs --folds K (without it there is one holdout split)")
    dataset = single_label(workdir_dataset(workspace))
    folder = workspace.studies / name
    config = study_record(dataset, settings.weights, settings.seed, "finetune", settings.batch_size) | asdict(settings) | {
        "folds": folds, "val_fraction": None if folds else VAL_FRACTION}
    check_same_study(folder, config | {"limit": limit}, has_results=any(folder.glob("**/metrics.json")))
    write_json(folder / STUDY_FILE, config | {"limit": limit})

    if not folds:  # one holdout split: a study, not a run (no out-of-fold rows for every image)
        dataset = apply_limit(dataset, limit)
        if (folder / "metrics.json").exists():
            info("holdout: done earlier in this study, kept")
        else:
            split = holdout_split(dataset.train_y, settings.seed)
            info(f"[bold]{backbone.name}[/bold] holdout: {len(split[0]):,} train / {len(split[1]):,} val images")
            write_fold(folder, *finetune_fold(backbone, dataset, split, settings, "holdout"))
        metrics = read_json(folder / "metrics.json")
        console.print(finetune_table([("holdout", metrics)], f"{name}: {backbone.name} fine-tuned, "
                                                                f"weights {Path(settings.weights).name}"))
        info(f"study: {folder}")
        return metrics

    # K folds: the workspace's split, the shared fold loop and OOF writer; a run manifest of kind "transfer".
    split = ensure_split(workspace, dataset.train_y, dataset.fingerprint, folds, settings.seed,
                         dataset.stats.get("train_files"))
    dataset = apply_limit(dataset, limit)
    manifest = make_manifest(name, "transfer", config | {"limit": limit}, dataset, split, pretrained=True,
                             metric=workspace.metric)
    write_json(folder / "config.json", manifest)

    def train(k: int) -> dict:
        train_pos, val_pos = split.rows(k, dataset.rows)
        info(f"[bold]{backbone.name}[/bold] fold {k}: {len(train_pos):,} train / {len(val_pos):,} val images")
        val_probs, test_probs, metrics = finetune_fold(backbone, dataset, (train_pos, val_pos), settings, f"fold{k}")
        write_fold(folder / f"fold{k}", val_probs, test_probs, metrics)
        return metrics

    run_folds(workspace, folder, parse_fold_selection(fold, folds), False, train)
    summarize_run(folder, dataset, split)
    info(f"study: {folder}")
    return {"folder": folder}
