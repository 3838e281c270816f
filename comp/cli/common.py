"""Options several commands share, and the one place CLI arguments become typed values."""

from __future__ import annotations

import argparse
from dataclasses import fields

from comp.config.run_config import FIELD_HELP, RunConfig, flag_type
from comp.core.errors import CompError
from comp.workspace import Workspace

BACKENDS = ("tensorflow", "jax", "torch")

# Fields with flags of their own elsewhere: lists parsed by hand, the global --seed, the data option --limit.
OWN_FLAGS = ("name", "depth", "head", "seed", "limit")
# The image-size fields, for train and tune (config fields) and the data commands.
SIZE_FIELDS = ("image_size", "resize")


def config_flags() -> list[tuple[str, type, str]]:
    """(field, type, help) for every RunConfig field a plain flag sets, made from the config's own
    rules and help (comp.config.run_config.FIELD_RULES, FIELD_HELP). Their defaults are None = "not
    given", so the config file, the model's own defaults and the dataclass defaults show through."""
    names = [f.name for f in fields(RunConfig) if f.name not in OWN_FLAGS + SIZE_FIELDS]
    return [(name, flag_type(name), FIELD_HELP[name]) for name in names]


CONFIG_FLAGS = config_flags()
SIZE_FLAGS = [(name, flag_type(name), FIELD_HELP[name]) for name in SIZE_FIELDS]


def add_global_options(parser: argparse.ArgumentParser, which: tuple[str, ...] = ("workdir", "quiet"),
                       suppress: bool = False) -> None:
    """The global options `which` a command takes (before or after its name)."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    group = parser.add_argument_group("global options")
    if "workdir" in which:
        group.add_argument("--workdir", default=default("."), help="where folds/ and submissions/ live (default: .)")
    if "seed" in which:
        group.add_argument("--seed", type=int, default=default(None), help="random seed (default: the run config's, 42)")
    if "backend" in which:
        group.add_argument("--backend", choices=BACKENDS, default=default(None),
                           help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    if "quiet" in which:
        group.add_argument("--quiet", action="store_true", default=default(False),
                           help="print only results and warnings")


def global_parent(*which: str) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, which, suppress=True)
    return parent


def add_data_options(parser: argparse.ArgumentParser, limit: bool = True) -> None:
    group = parser.add_argument_group("data options")
    group.add_argument("--data", help="competition folder (default: $COMP_DATA, else comp.toml, else ./data)")
    add_metric_option(group)
    if limit:
        group.add_argument("--limit", type=int, default=0,
                           help="use a deterministic stratified subsample of N train images (default: all)")
    group.add_argument("--skip-bad", action="store_true", help="skip damaged images instead of stopping")
    group.add_argument("--id-column", help="the labels CSV's id column (default: found by name: id, image_id, "
                                           "filename, file, image, img...)")
    group.add_argument("--label-column", help="the labels CSV's label column (default: found by name: label, "
                                              "target, class, category...)")
    group.add_argument("--labels-from", metavar="SOURCE",
                       help="where train/*.jpg's labels come from, remembered in comp.toml: csv (a labels CSV), "
                            "name (the file name's text before the first . or _: cat of cat.123.jpg), or "
                            "'name:REGEX' (searched in each file name; its first group is the label, e.g. "
                            "'name:^([a-z]+)_\\d+'). Default: the labels CSV, else the file names when every one "
                            "starts with one of a few words")


def add_metric_option(group) -> None:
    from comp.core.metrics import METRICS

    group.add_argument("--metric", help="the competition's metric, remembered in comp.toml like --data "
                                        f"(default: comp.toml's, else accuracy); one of {', '.join(METRICS)}")


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """--image-size and --resize for the commands that decode the data without a run config."""
    group = parser.add_argument_group("image size")
    for name, kind, text in SIZE_FLAGS:
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=getattr(RunConfig, name),
                           help=f"{text} (default: {getattr(RunConfig, name)})")


def model_default_note(name: str) -> str:
    """'default: X' for a RunConfig field, with the models that set their own."""
    from comp.nets.models import MODELS

    base = getattr(RunConfig, name, None)
    own = {model: spec.defaults[name] for model, spec in MODELS.items()
           if name in spec.defaults and spec.defaults[name] != base}
    text = "the model's" if base is None else (f"{base}" if base != "" else "none")
    if own:
        text += "; " + ", ".join(f"{model} {value}" for model, value in own.items())
    return f"(default: {text})"


def add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run config (flags override --config, which overrides the model's defaults)")
    group.add_argument("--config", help="JSON config file, a run's config.json, a tune best.json, or a recipe "
                                        "name (--list-recipes)")
    group.add_argument("--name", help=FIELD_HELP["name"])
    group.add_argument("--depth", help=FIELD_HELP["depth"] + " " + model_default_note("depth"))
    group.add_argument("--head", help=FIELD_HELP["head"] + " " + model_default_note("head"))
    for name, kind, text in CONFIG_FLAGS + SIZE_FLAGS:
        flags = ["--" + name.replace("_", "-")] + (["--threshold"] if name == "pseudo_threshold" else [])
        group.add_argument(*flags, dest=name, type=kind, default=None, help=f"{text} {model_default_note(name)}")
    group.add_argument("--preset", choices=("cpu", "gpu"), help="machine defaults: cpu (2 cores) or gpu (JAX, bf16)")


def int_list(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CompError(f"--{option} {text}: expected comma-separated integers like 3,3,4,4") from None


def config_overrides(args) -> dict:
    """The RunConfig fields the command line sets (None = not given)."""
    overrides = {name: getattr(args, name, None) for name, _, _ in CONFIG_FLAGS + SIZE_FLAGS}
    overrides |= {"name": args.name, "depth": int_list(args.depth, "depth"), "head": int_list(args.head, "head")}
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if getattr(args, "limit", 0):
        overrides["limit"] = args.limit
    return {k: v for k, v in overrides.items() if v is not None}


def workspace_from(args) -> Workspace:
    workspace = Workspace(args.workdir, data=getattr(args, "data", None), skip_bad=getattr(args, "skip_bad", False),
                          id_column=getattr(args, "id_column", None), label_column=getattr(args, "label_column", None),
                          labels_from=getattr(args, "labels_from", None),
                          metric=getattr(args, "metric", None))
    if getattr(args, "metric", None):
        _ = workspace.metric  # remembered in comp.toml now, whatever the command goes on to do
    return workspace
