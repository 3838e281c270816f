"""The search space of `comp tune`: defaults around the base config, space files, sampling.

A space maps RunConfig fields (plus `depth_scale`) to Optuna distributions. `default_space`
is valid for every model; `--space FILE` (JSON, TOML or YAML) narrows, widens, fixes or drops
entries; parameters the caller fixed (flags, keyword arguments) are never searched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from comp.config.run_config import RunConfig
from comp.core.console import console
from comp.core.errors import CompError
from comp.core.stats import IMBALANCED_RATIO
from comp.nets.models import model_defaults

import tomllib

LR_SPAN = 10  # the learning rate is searched from a tenth to ten times the config's, on a log scale
BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048)
MIN_STEPS_PER_EPOCH = 4  # a batch larger than a quarter of the train rows leaves an epoch too few steps
# alt-flip-crop: the fast nets' own default (alternating flips), searched for every model.
AUGMENT_CHOICES = ["none", "flip", "flip-crop", "alt-flip-crop", "simple", "flip-crop,cutout", "alt-flip-crop,cutout"]
# RunConfig fields the search never changes: they define what a score means (the data, the split,
# the epoch budget that pruning steps count in) or are names, so trials stay comparable.
UNSEARCHABLE = {"name", "model", "folds", "limit", "seed", "epochs", "depth", "head", "image_size", "resize", "pseudo",
               "devices"}
SPEC_KEYS = {"low", "high", "log", "step", "choices"}


def searchable_kinds() -> dict[str, type]:
    """Parameter name -> int, float or str: RunConfig's scalar fields, plus depth_scale."""
    kinds = {}
    for f in fields(RunConfig):
        first = str(f.type).split("|")[0].strip()  # "float | None" -> float
        if f.name not in UNSEARCHABLE and first in ("int", "float", "str"):
            kinds[f.name] = {"int": int, "float": float, "str": str}[first]
    kinds["depth_scale"] = float  # multiplies every stage of the config's depth (vgg, deep, resnet)
    return kinds


def batch_choices(base: int, train_rows: int) -> list[int]:
    """Powers of two from half to four times the config's batch, with enough steps per epoch."""
    choices = [b for b in BATCH_SIZES if base / 2 <= b <= base * 4 and b <= train_rows // MIN_STEPS_PER_EPOCH]
    return choices or [min(base, train_rows)]


def default_space(base: RunConfig, train_rows: int, imbalance: float = 1.0) -> dict[str, dict]:
    """A sensible space around the model's config: every entry is valid for every model. On
    imbalanced data (largest class / smallest >= IMBALANCED_RATIO) the class weights and the
    sampler are searched too."""
    space = {
        "lr": {"low": base.lr / LR_SPAN, "high": base.lr * LR_SPAN, "log": True},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
        "dropout": {"low": 0.0, "high": 0.5},
        # width is already a multiplier of the model's channels: search half to 1.5 times the config's.
        "width": {"low": round(base.width * 0.5, 6), "high": round(base.width * 1.5, 6),
                  "step": round(base.width * 0.25, 6)},
        "batch_size": {"choices": batch_choices(base.batch_size, train_rows)},
        "mixup": {"low": 0.0, "high": 0.4},
        "augment": {"choices": list(AUGMENT_CHOICES)},
        "label_smoothing": {"low": 0.0, "high": 0.2},
    }
    if imbalance >= IMBALANCED_RATIO:
        space["class_weight"] = {"choices": ["none", "balanced"]}
        space["sampler"] = {"choices": ["shuffle", "balanced"]}
    if base.depth and model_defaults(base.model).get("depth"):  # baseline and fast ignore depth
        space["depth_scale"] = {"low": 0.5, "high": 2.0, "step": 0.5}
    return space


def load_space_file(path: str) -> dict:
    """{name: spec}: a dict (low/high/log/step or choices), a fixed value, or null/false (not searched)."""
    file = Path(path)
    if not file.is_file():
        raise CompError(f"--space {path}: no such file")
    text = file.read_text()
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(file.suffix.lower(), "JSON")
    try:
        values = {"TOML": tomllib.loads, "YAML": _load_yaml, "JSON": json.loads}[kind](text)
    except ValueError as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors; so is _load_yaml's
        raise CompError(f"{path}: not readable as {kind} ({err}); fix the file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CompError(f"{path}: must hold a mapping of parameter names to ranges, choices or fixed values")
    return values


def _load_yaml(text: str):
    import yaml  # installed with optuna

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err).replace("\n", " ")) from None


def _merge_spec(default: dict | None, user: dict) -> dict:
    """A partial range narrows or widens the default one: {"high": 0.3} keeps the default low."""
    if "choices" in user or not default or "choices" in default:
        return dict(user)
    merged = {**default, **user}
    if user.get("log") and "step" not in user:
        merged.pop("step", None)  # Optuna takes either a step or a log scale
    return merged


def to_distribution(name: str, spec: dict, kind: type, source: str):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise CompError(f"{source}: {name}: unknown key(s) {', '.join(unknown)}; use low, high, log, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        scalars = isinstance(choices, list) and all(isinstance(c, (int, float, str)) for c in choices)
        if not choices or not scalars:
            raise CompError(f"{source}: {name}: choices must be a non-empty list of numbers or words")
        return CategoricalDistribution(tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise CompError(f"{source}: {name}: give low and high (a range) or choices (a list)")
    if kind is str:
        raise CompError(f"{source}: {name} takes words, not a range; give choices: [...]")
    try:
        if kind is int:
            numbers = [spec["low"], spec["high"], spec.get("step", 1)]
            if any(not float(v).is_integer() for v in numbers):
                raise CompError(f"{source}: {name} is a whole number; give whole low, high and step")
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")),
                                   step=int(spec.get("step", 1)))
        step = spec.get("step")
        return FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                 step=None if step is None else float(step))
    except (TypeError, ValueError) as err:
        raise CompError(f"{source}: {name}: {err}") from None


def scale_depth(depth: list[int], scale: float) -> list[int]:
    return [max(1, int(d * scale + 0.5)) for d in depth]  # round half up (Python's round(2.5) is 2)


def apply_params(base: RunConfig, params: dict, tta_auto: bool, source: str = "search space") -> RunConfig:
    """The config one trial trains: the base with the sampled (or fixed) parameters laid over it."""
    values = base.to_dict()
    values.update({k: v for k, v in params.items() if k != "depth_scale"})
    if "depth_scale" in params:
        if not base.depth:
            raise CompError(f"{source}: depth_scale: model {base.model} has no depth to scale; remove it")
        values["depth"] = scale_depth(base.depth, params["depth_scale"])
    if tta_auto:
        values["tta"] = "auto"  # re-derive test-time augmentation from the augmentation this trial trains with
    return RunConfig.from_dict(values, source)


@dataclass
class Space:
    base: RunConfig  # the fixed config, fixed values of the space file included
    distributions: dict  # name -> optuna distribution, in sampling order
    tta_auto: bool  # trials re-derive tta from their augmentation
    fixed: dict  # name -> value fixed by flags or the space file (for the printout)


def build_space(base: RunConfig, train_rows: int, space=None, fixed: set[str] = frozenset(),
                tta_pinned: bool = False, imbalance: float = 1.0) -> Space:
    """The search space around `base`.

    `space`: a space file path, or a dict of the same shape, narrowing/widening/fixing entries.
    `fixed`: searchable names the caller fixed (flags, keyword arguments): never searched.
    `tta_pinned`: the caller chose the TTA policy; otherwise trials that search the augmentation
    re-derive it from the augmentation they train with. `imbalance`: the train rows' largest class
    over their smallest.
    """
    kinds = searchable_kinds()
    specs = default_space(base, train_rows, imbalance)
    source = str(space) if isinstance(space, (str, Path)) else "search space"
    user = load_space_file(str(space)) if isinstance(space, (str, Path)) else dict(space or {})
    flagged = set(fixed) & set(kinds)
    fixed_values = {name: base.depth if name == "depth_scale" else getattr(base, name)
                    for name in flagged if name in specs}
    file_fixed = {}
    for name, value in user.items():
        if name not in kinds:
            hint = " (fix depth with --depth, search it with depth_scale)" if name == "depth" else ""
            raise CompError(f"{source}: {name!r} cannot be searched{hint}; searchable: {', '.join(sorted(kinds))}")
        if name in flagged:
            raise CompError(f"{source}: {name} is also given as --{name.replace('_', '-')}; keep one of the two")
        if value is None or value is False:  # null (or false: TOML has no null) = not searched
            specs.pop(name, None)
        elif isinstance(value, dict):
            specs[name] = _merge_spec(specs.get(name), value)
        elif isinstance(value, (int, float, str)) and value is not True:
            file_fixed[name] = value
            specs.pop(name, None)
        else:
            raise CompError(f"{source}: {name} = {value!r}; give a range, choices, a fixed value or null")
    for name in flagged:
        specs.pop(name, None)
    pinned = tta_pinned or "tta" in file_fixed or "tta" in specs
    tta_auto = "augment" in specs and not pinned
    if file_fixed:
        base = apply_params(base, file_fixed, tta_auto="augment" in file_fixed and not pinned, source=source)
    distributions = {name: to_distribution(name, spec, kinds[name], source) for name, spec in specs.items()}
    _check_space(base, distributions, tta_auto, source)
    return Space(base, distributions, tta_auto, fixed_values | file_fixed)


def _check_space(base: RunConfig, distributions: dict, tta_auto: bool, source: str) -> None:
    """Refuse now, not after an hour, a space whose ends the config would refuse."""
    for name, dist in distributions.items():
        ends = dist.choices if hasattr(dist, "choices") else (dist.low, dist.high)
        for value in ends:
            apply_params(base, {name: value}, tta_auto, f"{source}: {name} = {value!r}")


def describe(dist) -> str:
    if hasattr(dist, "choices"):
        return "one of " + ", ".join(map(str, dist.choices))
    scale = "log " if dist.log else ""
    step = f" step {dist.step:g}" if dist.step not in (None, 1) else ""
    return f"{scale}{dist.low:g} .. {dist.high:g}{step}"


def print_space(space: Space) -> None:
    from rich.table import Table

    table = Table(title="search space")
    table.add_column("parameter")
    table.add_column("searched over")
    for name, dist in space.distributions.items():
        table.add_row(name, describe(dist))
    for name, value in space.fixed.items():
        table.add_row(name, f"fixed at {value}")
    console.print(table)


def suggest(trial, space: Space) -> dict:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return params
