"""RunConfig: the one object that describes a training run, saved with it as config.json.

`comp train` builds it from (in order of precedence) CLI flags, `--config FILE` (a JSON file or
a named recipe), the model's preset defaults, and the dataclass defaults below. Tuning writes
its best trial as a file of the same shape, so `comp train --config folds/<study>/best.json`
trains exactly what was found.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import CompError

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class RunConfig:
    name: str = ""  # run folder under folds/; empty -> "<model>-<hash of the config>"
    model: str = "baseline"  # a key of comp.models.MODELS
    # Architecture knobs; None means "the model's own default".
    depth: list[int] | None = None  # convs (vgg) or residual blocks (resnet) per stage
    width: float = 1.0  # channel multiplier
    dropout: float | None = None
    head: list[int] | None = None  # dense layers before the classifier
    # Optimisation.
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"  # adam | adamw | sgd (Nesterov momentum)
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine | onecycle
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    bias_lr_scale: float = 1.0  # sgd only: learning-rate multiplier for BatchNorm biases (airbench: 64)
    ema: float = 0.0  # >0: keep an exponential moving average of weights with this momentum
    lookahead: float = 0.0  # >0: airbench's lookahead averaging, per-step decay (0.95); see trainer
    label_smoothing: float = 0.0
    patience: int = 0  # early stopping on val accuracy; 0 = off
    keep: str = "best"  # best (epoch with best val accuracy) | last
    # Augmentation, on the device inside the train step.
    augment: str = "none"  # comma-separated presets (comp.augment.PRESETS), e.g. flip-crop,cutout
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) box area; 0 = off
    # Test-time augmentation used for the predictions this run writes.
    tta: str = "auto"  # none | flip | flip-shift | auto (the views training augmentation taught the net)
    # Execution.
    precision: str = "float32"  # float32 | bfloat16 | float16 (mixed precision)
    jit: str = "auto"  # auto | on | off ("auto" = Keras's choice: off on CPU with TF)
    folds: int = 5
    seed: int = 42
    limit: int = 0  # 0 = all train rows

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - IGNORED_KEYS)
        if unknown:
            raise CompError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.validate(source)
        return config

    def replace(self, **changes) -> "RunConfig":
        changes = {k: v for k, v in changes.items() if v is not None}
        config = dataclasses.replace(self, **changes)
        config.validate("options")
        return config

    def validate(self, source: str) -> None:
        from .models import MODELS

        choices = {
            "optimizer": ("adam", "adamw", "sgd"),
            "schedule": ("constant", "cosine", "onecycle"),
            "precision": ("float32", "bfloat16", "float16"),
            "jit": ("auto", "on", "off"),
            "keep": ("best", "last"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise CompError(f"{source}: {key} = {getattr(self, key)!r}; choose one of {', '.join(allowed)}")
        if self.model not in MODELS:
            raise CompError(f"{source}: model = {self.model!r}; choose one of {', '.join(MODELS)}")
        from .augment import parse_presets

        parse_presets(self.augment, source)
        from .tta import parse_policy, policy_for_augment

        # A named policy (none, flip, flip-shift) or a custom list such as "flip,shift=1".
        self.tta = policy_for_augment(self.augment) if self.tta == "auto" else parse_policy(self.tta)
        for key in ("epochs", "batch_size", "folds"):
            if getattr(self, key) < (2 if key == "folds" else 1):
                raise CompError(f"{source}: {key} = {getattr(self, key)} is too small")
        if self.bias_lr_scale != 1.0 and self.optimizer != "sgd":
            raise CompError(f"{source}: bias_lr_scale works with optimizer sgd only (Adam's steps ignore "
                            "gradient scale); set it to 1 or use sgd")
        if self.bias_lr_scale <= 0:
            raise CompError(f"{source}: bias_lr_scale = {self.bias_lr_scale} must be > 0")
        for key in ("ema", "lookahead"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise CompError(f"{source}: {key} = {getattr(self, key)} must be in [0, 1); 0 turns it off")
        if self.ema and self.lookahead:
            raise CompError(f"{source}: ema and lookahead are two ways to average weights; set one of them to 0")
        if isinstance(self.depth, int):
            self.depth = [self.depth]

    # -- identity ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity_hash(self) -> str:
        """Hash of everything that changes the trained weights (not the name)."""
        values = self.to_dict()
        values.pop("name")
        return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def averages_weights(self) -> bool:
        """Training ends on an average of the weights (lookahead or EMA), not the last step's."""
        return bool(self.lookahead or self.ema)

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.identity_hash()}"


# Keys a saved config.json carries beside the config proper (provenance), skipped on load.
IGNORED_KEYS = {"provenance", "pretrained", "comment", "study", "trial", "value"}


def load_config_file(path_or_name: str) -> dict:
    """--config takes a JSON file path or the name of a bundled recipe (see `comp train --list-recipes`)."""
    path = Path(path_or_name)
    if not path.exists():
        recipe = RECIPES_DIR / f"{path_or_name.removesuffix('.json')}.json"
        if recipe.exists():
            path = recipe
        else:
            names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.json")))
            raise CompError(f"{path_or_name}: no such config file or recipe; recipes: {names}")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    if not isinstance(values, dict):
        raise CompError(f"{path}: must hold a JSON object of config keys")
    return values


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.json"))


def build_config(file_values: dict | None, overrides: dict, source: str = "config") -> RunConfig:
    """Dataclass defaults < the model's preset < --config file (named `source`) < CLI flags.

    A bad value is reported under the name of where it came from: the file's path when the file
    alone is invalid, "options" when a command-line flag made it so.
    """
    from .models import model_defaults

    values = dict(file_values or {})
    flags = {k: v for k, v in overrides.items() if v is not None}
    model = flags.get("model") or values.get("model") or RunConfig.model
    try:
        return RunConfig.from_dict({**model_defaults(model), **values, **flags}, "options" if flags else source)
    except CompError:
        if flags and values:
            RunConfig.from_dict({**model_defaults(model), **values}, source)  # raises if the file is to blame
        raise
