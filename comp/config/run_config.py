"""RunConfig: the one object that describes a training run, saved with it in its manifest.

`comp train` (and `Workspace.train`) builds it from (in order of precedence) explicit
overrides (CLI flags or keyword arguments), a config file (a JSON file, a run's manifest, a
tune best.json, or a named recipe), the model's preset defaults, and the dataclass defaults
below. Every field is checked by type and range (`FIELD_RULES`) before anything is written, so a
bad value is one line naming where it came from, never a traceback after the run folder exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from comp.core.errors import CompError
from comp.nets.models import model_defaults, MODELS, TRAINED_WHITENING_BIAS
from comp.config.augment_presets import PRESETS as AUGMENT_PRESETS, parse_presets
from comp.config.tta_policy import parse_policy, policy_for_augment

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class RunConfig:
    name: str = ""  # run folder under folds/; empty -> "<model>-<hash of the config>"
    model: str = "baseline"  # a key of comp.nets.models.MODELS
    # Architecture knobs; None means "the model's own default".
    depth: list[int] | None = None  # convs (vgg) or residual blocks (resnet) per stage
    width: float = 1.0  # channel multiplier
    dropout: float | None = None
    head: list[int] | None = None  # dense layers before the classifier
    # Optimisation.
    # Fractional epochs train ceil(epochs * steps per epoch) steps, as airbench counts its 9.9
    # (sgd-torch only: its steps past that count, to the end of the last epoch, change nothing).
    epochs: int | float = 10
    batch_size: int = 64
    # adam | adamw | sgd (Keras's Nesterov SGD, decoupled weight decay) | sgd-torch (PyTorch's
    # Nesterov SGD with weight_decay an L2 term through the momentum: airbench's exact optimizer)
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_epochs: float = 0.0
    lr_peak_at: float = 0.23  # onecycle without warm-up epochs: the peak's place, a fraction of the steps (airbench94)
    lr_end: float = 0.07  # onecycle: the last step's learning rate, a fraction of the peak (airbench94; airbench96 0)
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd, sgd-torch
    bias_lr_scale: float = 1.0  # sgd, sgd-torch: learning-rate multiplier for BatchNorm biases (airbench: 64)
    # airbench nets, sgd-torch: the whitening layer's bias trains this many epochs, then stays (airbench: 3)
    whiten_bias_epochs: float = 0.0
    ema: float = 0.0  # >0: keep an exponential moving average of weights with this momentum
    lookahead: float = 0.0  # >0: airbench's lookahead averaging, per-step decay (0.95); see trainer
    label_smoothing: float = 0.0
    # Class imbalance. class_weight balanced: each class's loss weighs rows / (classes * its rows) of the
    # fold's training rows. sampler balanced: batches draw every class equally often (with replacement).
    class_weight: str = "none"
    sampler: str = "shuffle"
    patience: int = 0  # early stopping on val accuracy; 0 = off
    # Validate after every N epochs (and the last); 0: never during training, the fold's final
    # predictions still score it (--preset gpu: a GPU epoch is about as long as a validation).
    val_every: int = 1
    # last: the final epoch's weights. best: the epoch with the best validation accuracy, chosen on
    # the very rows whose out-of-fold predictions the run reports, so its OOF score flatters it.
    keep: str = "last"
    # The input images, decoded once per size and resize mode (folds/cache/).
    image_size: int | str = "auto"  # N or "HxW" pixels; auto: the images' own size if all share one <= 64, else 128
    resize: str = "squash"  # squash | crop | pad: how an image of another aspect ratio is fitted (comp.data.decode)
    # Augmentation, on the device inside the train step.
    augment: str = "none"  # comma-separated presets (comp.config.augment_presets.PRESETS), e.g. flip-crop,cutout
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) box area; 0 = off
    # Test-time augmentation used for the predictions this run writes.
    tta: str = "auto"  # none | flip | flip-shift | auto (the views training augmentation taught the net)
    # Execution.
    # float32 | bfloat16 | float16 (mixed precision) | auto (bfloat16 on a GPU or a CPU with native
    # bfloat16, AVX512-BF16 or AMX; float32 elsewhere: comp.core.backend.resolve_precision)
    precision: str = "float32"
    jit: str = "auto"  # auto | on | off ("auto" = Keras's choice: off on CPU with TF)
    # all | N: the local devices one fold trains on, data parallel (JAX; comp.engine.devices). "all":
    # every accelerator, one device on a CPU. Not part of the run's identity: the same run, more devices.
    devices: str = "all"
    folds: int = 5
    # 0 = all K folds. N < K: the run trains only folds 0..N-1 of the K-fold split, its out-of-fold
    # estimate covers their validation rows (N/K of the data) and each model still trains on (K-1)/K
    # of it: a holdout estimate for when K folds cost more than the time there is (comp auto).
    run_folds: int = 0
    seed: int = 42
    limit: int = 0  # 0 = all train rows
    # Pseudo-labelling: test images the teacher runs (comma-separated names) predict with at least
    # pseudo_threshold probability join each fold's training rows with those labels. Fold k takes
    # its teachers' fold-k predictions, made without fold k's validation rows: the OOF stays honest.
    pseudo: str = ""
    pseudo_threshold: float = 0.95

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "RunConfig":
        if not isinstance(values, dict):
            raise CompError(f"{source}: must be a mapping of config keys to values")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - IGNORED_KEYS)
        if unknown:
            raise CompError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.validate(source)
        return config

    def replace(self, **changes) -> "RunConfig":
        """A copy with `changes` (None values ignored), checked like any other config."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return RunConfig.from_dict({**self.to_dict(), **changes}, "options")

    def validate(self, source: str) -> None:
        """Every field by type and range (`FIELD_RULES`), then the rules across fields."""
        for name in fields(self):
            setattr(self, name.name, check_field(name.name, getattr(self, name.name), source))

        if self.model not in MODELS:
            raise CompError(f"{source}: model = {self.model!r}; choose one of {', '.join(MODELS)}")

        parse_presets(self.augment, source)

        # A named policy (none, flip, flip-shift) or a custom list such as "flip,shift=1".
        self.tta = policy_for_augment(self.augment) if self.tta == "auto" else parse_policy(self.tta)
        if self.bias_lr_scale != 1.0 and self.optimizer not in ("sgd", "sgd-torch"):
            raise CompError(f"{source}: bias_lr_scale works with optimizer sgd or sgd-torch only (Adam's steps "
                            "ignore gradient scale); set it to 1 or use sgd")
        if not float(self.epochs).is_integer() and self.optimizer != "sgd-torch":
            raise CompError(f"{source}: epochs = {self.epochs}: a fraction of an epoch needs optimizer sgd-torch "
                            "(its updates stop at the exact step count); use whole epochs or sgd-torch")
        if self.whiten_bias_epochs and (self.optimizer != "sgd-torch" or self.model not in TRAINED_WHITENING_BIAS):
            raise CompError(f"{source}: whiten_bias_epochs works with optimizer sgd-torch and the models "
                            f"{', '.join(TRAINED_WHITENING_BIAS)} only; set it to 0")
        if self.run_folds >= self.folds:
            raise CompError(f"{source}: run_folds = {self.run_folds} with folds = {self.folds}: a run trains at most "
                            f"its K folds; set run_folds to 0 (all) or under {self.folds}")
        if self.ema and self.lookahead:
            raise CompError(f"{source}: ema and lookahead are two ways to average weights; set one of them to 0")
        for needs, what in ((self.keep == "best", "keep = best picks the epoch"), (self.patience, "patience stops")):
            if needs and self.val_every != 1:
                raise CompError(f"{source}: {what} by validation accuracy, which needs validation after every "
                                f"epoch, and val_every = {self.val_every}; set val_every = 1 (--val-every 1)")
        if self.keep == "best" and self.averages_weights:
            raise CompError(f"{source}: keep = best with {'ema' if self.ema else 'lookahead'}: the averaged weights "
                            "exist only after the last epoch, so there is no best epoch of them; use keep = last")

    # -- identity ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity_hash(self) -> str:
        """Hash of everything that changes the trained weights (not the name). Fields added later
        count only when set away from their default, so earlier runs keep their names."""
        values = self.to_dict()
        values.pop("name")
        values.pop("devices")  # where it trains, not what
        for key, default in HASHED_WHEN_SET.items():
            if values[key] == default:
                values.pop(key)
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def run_fold_indices(self) -> list[int]:
        """The folds that make the run: all K, or the first run_folds of them (a holdout estimate)."""
        return list(range(self.run_folds or self.folds))

    @property
    def averages_weights(self) -> bool:
        """Training ends on an average of the weights (lookahead or EMA), not the last step's."""
        return bool(self.lookahead or self.ema)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of training: ceil(epochs * steps per epoch) (airbench94: ceil(9.9 * 48) = 476)."""
        return max(1, math.ceil(round(self.epochs * steps_per_epoch, 6)))

    @property
    def fit_epochs(self) -> int:
        """Whole epochs fit runs: a fractional last epoch runs to its end (its extra steps change nothing)."""
        return math.ceil(self.epochs)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.identity_hash()}"


HASHED_WHEN_SET = {"class_weight": "none", "sampler": "shuffle", "run_folds": 0}  # fields newer than the hash scheme: their defaults

_dataclass_init = RunConfig.__init__


def _init_remembering_given(self, *args, **kwargs):
    """RunConfig's __init__, remembering which fields the caller set: `RunConfig(model="resnet", epochs=3)`
    means resnet with its own defaults and 3 epochs, not resnet with the baseline's optimizer."""
    _dataclass_init(self, *args, **kwargs)
    self.__dict__["_given"] = {f.name for f in fields(RunConfig)[:len(args)]} | set(kwargs)


RunConfig.__init__ = _init_remembering_given


def given_fields(config: RunConfig) -> dict:
    """The fields the caller set when constructing `config` (all of them for a config read from a file)."""
    given = getattr(config, "_given", None)
    values = config.to_dict()
    return values if given is None else {k: v for k, v in values.items() if k in given}


# -- per-field rules ---------------------------------------------------------------------------

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # one safe path component: a folder under folds/


@dataclass(frozen=True)
class Number:
    """An int or float field: its kind and range. `low_open`: the low end itself is refused."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None allowed (the model's own default)
    whole_as_int: bool = False  # a float field whose whole values are stored as int (hashes stay as they were)

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        what = "a whole number" if self.kind is int else "a number"
        return " and ".join(p for p in (f"{what} {low}".strip(), high) if p)


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]


@dataclass(frozen=True)
class Text:
    pass


@dataclass(frozen=True)
class IntList:
    low: int = 1  # every entry at least this


@dataclass(frozen=True)
class Name:
    pass


@dataclass(frozen=True)
class DeviceCount:
    """"all" or a whole number of devices >= 1, kept as text ("4")."""


@dataclass(frozen=True)
class ImageSize:
    """"auto", a side N (square) or "HxW", every side in low..high pixels."""

    low: int = 4
    high: int = 4096


FIELD_RULES = {
    "name": Name(),
    "model": Text(),  # checked against the registry in validate (it imports the models)
    "depth": IntList(1),
    "width": Number(float, 0, 16, low_open=True),
    "dropout": Number(float, 0, 1, high_open=True, optional=True),
    "head": IntList(1),
    "epochs": Number(float, 0, 100_000, low_open=True, whole_as_int=True),
    "batch_size": Number(int, 1, 1 << 16),
    "optimizer": Choice(("adam", "adamw", "sgd", "sgd-torch")),
    "lr": Number(float, 0, None, low_open=True),
    "schedule": Choice(("constant", "cosine", "onecycle")),
    "warmup_epochs": Number(float, 0),
    "lr_peak_at": Number(float, 0, 1, high_open=True),
    "lr_end": Number(float, 0, 1),
    "weight_decay": Number(float, 0, 1, high_open=True),
    "momentum": Number(float, 0, 1, high_open=True),
    "bias_lr_scale": Number(float, 0, None, low_open=True),
    "whiten_bias_epochs": Number(float, 0),
    "ema": Number(float, 0, 1, high_open=True),
    "lookahead": Number(float, 0, 1, high_open=True),
    "label_smoothing": Number(float, 0, 1, high_open=True),
    "class_weight": Choice(("none", "balanced")),
    "sampler": Choice(("shuffle", "balanced")),
    "patience": Number(int, 0),
    "val_every": Number(int, 0, 100_000),
    "keep": Choice(("best", "last")),
    "image_size": ImageSize(),
    "resize": Choice(("squash", "crop", "pad")),
    "augment": Text(),  # parsed by comp.engine.augment in validate
    "mixup": Number(float, 0, 100),
    "cutmix": Number(float, 0, 100),
    "tta": Text(),  # parsed by comp.engine.tta in validate
    "precision": Choice(("float32", "bfloat16", "float16", "auto")),
    "jit": Choice(("auto", "on", "off")),
    "devices": DeviceCount(),
    "folds": Number(int, 2, 100),
    "run_folds": Number(int, 0, 100),
    "seed": Number(int, 0, 2**32 - 1),
    "limit": Number(int, 0),
    "pseudo": Text(),  # teacher run names, checked when the run starts (comp.stages.pseudo)
    "pseudo_threshold": Number(float, 0, 1, low_open=True),
}


# Machine presets (`--preset`): over the model's defaults, under a config file and flags.
MACHINE_PRESETS = {
    # 2 CPU cores: what `comp auto --time 60m` planned for the 50,000-image CIFAR-10 here (airbench94, full
    # width, 15 epochs, 2 folds, flip TTA; OOF 0.88 with TTA in about an hour, bench/RESULTS.md). The
    # fold count applies only where the data has no split yet: every run shares the split. Precision
    # auto: bfloat16 on a CPU that computes it natively (1.35-1.41x the images a second, same accuracy).
    "cpu": {"model": "airbench94", "width": 1.0, "epochs": 15, "folds": 2, "tta": "flip", "val_every": 0,
            "precision": "auto", "jit": "auto"},
    # One GPU (JAX, chosen by the CLI): the wide speedrun net, bf16, a large batch; on an H200 its
    # 5 folds reach OOF 0.92 with TTA in about 4 minutes (bench/RESULTS.md). No validation inside
    # training: a GPU epoch takes about as long as predicting the validation rows.
    "gpu": {"model": "fast-large", "batch_size": 512, "precision": "bfloat16", "jit": "on", "val_every": 0},
}


# Each field's help, as `comp train/tune --help` shows it: the CLI makes one flag per field from
# FIELD_RULES and this table (comp.cli.common.config_flags), so a new field is a flag without a second list.
FIELD_HELP = {
    "name": "run name under folds/ (default: <model>-<config hash>)",
    "model": "model name (see --list-models)",
    "depth": "convs/blocks per stage, e.g. 3,3,4,4",
    "width": "channel width multiplier",
    "dropout": "dropout",
    "head": "dense head units, e.g. 256,64",
    "epochs": "epochs per fold (a fraction with sgd-torch: airbench94 trains 9.9)",
    "batch_size": "batch size",
    "optimizer": "adam | adamw | sgd | sgd-torch",
    "lr": "peak learning rate",
    "schedule": "constant | cosine | onecycle",
    "warmup_epochs": "learning-rate warm-up, in epochs",
    "lr_peak_at": "onecycle without warm-up: where the peak is, a fraction of the steps",
    "lr_end": "onecycle: the last step's learning rate, a fraction of the peak",
    "weight_decay": "weight decay (decoupled; sgd-torch: an L2 term through the momentum)",
    "momentum": "sgd, sgd-torch: momentum",
    "bias_lr_scale": "sgd, sgd-torch: learning-rate multiplier for BatchNorm biases (1 = off)",
    "whiten_bias_epochs": "airbench nets with sgd-torch: epochs the whitening layer's bias trains (0 = all)",
    "ema": "weight EMA momentum (0 = off)",
    "lookahead": "lookahead weight averaging, per-step decay e.g. 0.95 (0 = off)",
    "label_smoothing": "label smoothing",
    "class_weight": "none | balanced: weigh each class's loss by rows / (classes x its rows), for imbalanced data",
    "sampler": "shuffle | balanced: balanced draws batches with every class equally often (with replacement)",
    "patience": "early stopping patience on val accuracy (0 = off)",
    "val_every": "validate after every N epochs and the last (0: only the fold's final predictions)",
    "keep": "last | best epoch's model (best is picked on the OOF rows: flatters OOF)",
    "image_size": "N or HxW pixels the images are decoded at (one cache per size); auto: their own size "
                  "when all share one up to 64 px, else 128",
    "resize": "squash | crop | pad: how an image of another aspect ratio is fitted",
    "augment": "augmentation presets, comma-separated: " + ", ".join(AUGMENT_PRESETS) + ", crop=N, reflect-crop=N, "
               "cutout-inside=N",
    "mixup": "mixup alpha (0 = off)",
    "cutmix": "cutmix alpha (0 = off)",
    "tta": "none | flip | flip-shift | airbench | auto (what augmentation taught)",
    "precision": "float32 | bfloat16 | float16 | auto (bfloat16 on a GPU or a CPU with AVX512-BF16/AMX)",
    "jit": "auto | on | off",
    "devices": "all | N: train each fold data parallel on N local devices (JAX); all = every GPU, 1 on a CPU",
    "folds": "number of folds K",
    "run_folds": "train only the first N of the K folds (0 = all): the out-of-fold estimate covers N/K of the rows",
    "seed": "random seed",
    "limit": "a deterministic stratified subsample of N train rows (0 = all)",
    "pseudo": "pseudo-labelling teachers: finished runs, comma-separated (fold k learns from their fold-k test "
              "predictions)",
    "pseudo_threshold": "pseudo-labelling: least teacher probability for a test image to join",
}


def flag_type(name: str) -> type:
    """The Python type a command-line value of field `name` is parsed as (the rules check the rest)."""
    rule = FIELD_RULES[name]
    return rule.kind if isinstance(rule, Number) else str

def _bad(source: str, key: str, value, expected: str) -> CompError:
    return CompError(f"{source}: {key} = {value!r}; expected {expected}")


def _number(key: str, value, rule: Number, source: str):
    if value is None and rule.optional:
        return None
    # bool is an int to Python, but `epochs: true` is a typo, never a count.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(source, key, value, rule.describe())
    if not math.isfinite(value):
        raise _bad(source, key, value, rule.describe())
    if rule.kind is int:
        if not float(value).is_integer():
            raise _bad(source, key, value, rule.describe())
        value = int(value)
    elif rule.whole_as_int and float(value).is_integer():
        value = int(value)
    else:
        value = float(value)
    too_low = rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low)
    too_high = rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high)
    if too_low or too_high:
        raise _bad(source, key, value, rule.describe())
    return value


AUTO_SIZE = "auto"
SIZE_TEXT = re.compile(r"(\d+)(?:\s*x\s*(\d+))?")  # "128" or "96x128" (height x width)


def _image_size(key: str, value, rule: ImageSize, source: str):
    """The canonical image size: "auto", N for a square, "HxW" otherwise (so 64, "64" and "64x64" are one config)."""
    if value == AUTO_SIZE:
        return value
    expected = f'"{AUTO_SIZE}", a side N or "HxW" in pixels, each side {rule.low}-{rule.high}'
    match = SIZE_TEXT.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if match:
        height, width = int(match[1]), int(match[2] or match[1])
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        height = width = int(value)
    else:
        raise _bad(source, key, value, expected)
    if not (rule.low <= height <= rule.high and rule.low <= width <= rule.high):
        raise _bad(source, key, value, expected)
    return height if height == width else f"{height}x{width}"


def image_hw(image_size) -> tuple[int, int] | None:
    """(height, width) of a checked image_size; None for "auto" (the data decides)."""
    if image_size == AUTO_SIZE:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size.split("x")
    return int(height), int(width)


def check_field(key: str, value, source: str):
    """The field's value in its canonical type, or a CompError naming the key, the value and what fits."""
    rule = FIELD_RULES[key]
    if isinstance(rule, Number):
        return _number(key, value, rule, source)
    if isinstance(rule, ImageSize):
        return _image_size(key, value, rule, source)
    if isinstance(rule, DeviceCount):
        text = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        if text != "all" and not (text.isdigit() and int(text) >= 1):
            raise _bad(source, key, value, '"all" or a number of devices >= 1')
        return text if text == "all" else str(int(text))
    if isinstance(rule, Choice):
        if value not in rule.options:
            raise _bad(source, key, value, f"one of {', '.join(rule.options)}")
        return value
    if isinstance(rule, IntList):
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        entries = value if isinstance(value, list) else None
        expected = f"a list of whole numbers >= {rule.low}, e.g. [2, 2, 2]"
        if not entries or any(isinstance(v, bool) or not isinstance(v, (int, float))
                              or not float(v).is_integer() or v < rule.low for v in entries):
            raise _bad(source, key, value, expected)
        return [int(v) for v in entries]
    if isinstance(rule, Name):
        if not isinstance(value, str) or (value and not RUN_NAME.fullmatch(value)):
            raise _bad(source, key, value, "a run name of letters, digits, '.', '_' and '-' (a folder under folds/), "
                                           "starting with a letter or digit")
        return value
    if not isinstance(value, str):
        raise _bad(source, key, value, "text")
    return value


# Keys a saved manifest or best.json carries beside the config proper, skipped on load.
IGNORED_KEYS = {"provenance", "pretrained", "comment", "study", "trial", "value", "tuned"}


def load_config_file(path_or_name: str) -> dict:
    """--config takes a JSON file path, a run folder's config.json, or the name of a bundled recipe."""
    path = Path(path_or_name)
    if not path.exists():
        recipe = RECIPES_DIR / f"{str(path_or_name).removesuffix('.json')}.json"
        if recipe.exists():
            path = recipe
        else:
            names = ", ".join(recipe_names())
            raise CompError(f"{path_or_name}: no such config file or recipe; recipes: {names}")
    if path.is_dir():
        path = path / "config.json"  # a run folder
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise CompError(f"{path}: cannot be read ({err}); pass a JSON config file") from None
    except json.JSONDecodeError as err:
        raise CompError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    if not isinstance(values, dict):
        raise CompError(f"{path}: must hold a JSON object of config keys")
    if isinstance(values.get("config"), dict) and "schema" in values:  # a run manifest: its config
        values = values["config"]
    return values


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def build_config(file_values: dict | None, overrides: dict, source: str = "config") -> RunConfig:
    """Dataclass defaults < the model's preset < config file (named `source`) < overrides.

    A bad value is reported under the name of where it came from: the file's path when the file
    alone is invalid, "options" when an override made it so.
    """
    values = dict(file_values or {})
    flags = {k: v for k, v in overrides.items() if v is not None}
    model = flags.get("model") or values.get("model") or RunConfig.model
    if not isinstance(model, str):
        raise _bad("options" if "model" in flags else source, "model", model, "a model name")
    try:
        return RunConfig.from_dict({**model_defaults(model), **values, **flags}, "options" if flags else source)
    except CompError:
        if flags and values:
            RunConfig.from_dict({**model_defaults(model), **values}, source)  # raises if the file is to blame
        raise
