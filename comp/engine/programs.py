"""The engine cache: one compiled training model (and its predict programs) per config, and compile counts."""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from comp.config.run_config import RunConfig
from comp.config.tta_policy import views_for
from comp.core.backend import resolve_precision
from comp.engine.augment import make_augment_layer, make_mix_layer
from comp.engine.batchnorm import BatchStatistics
from comp.engine.devices import announce, distribute, local_devices
from comp.engine.feed import FoldStore, store_capacity
from comp.engine.inference import Predictor
from comp.engine.optimizers import compile_training_model
from comp.engine.step import TrainingModel
from comp.engine.tta import view_fill
from comp.nets.models import build_model


# Compile once: everything fitted on a fold's rows (normalisation, whitening) is a variable, so
# every fold, seed and trial of one config traces the same programs. `prepare_engine` keeps the
# last config's compiled model in the process and, for the next fold, only loads that fold's
# freshly built initial state into it (the persistent cache covers new processes).

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def set_precision(precision: str) -> None:
    """Keras's global dtype policy for `precision` (RunConfig.precision, "auto" resolved here)."""
    keras.config.set_dtype_policy(PRECISION_POLICIES[resolve_precision(precision)])


# Folds and full-data fits one seed may have. Fold f of seed s draws every stream (initial weights,
# batch order, augmentation) from s * FOLDS_PER_SEED + f: with s + f, a run of seed s + 1 (a seed
# ensemble) repeated seed s's initial weights and batch order one fold later, and its full-data
# fit i those of seed s's fit i + 1, on the very same rows.
FOLDS_PER_SEED = 1000


def fold_seed(config: RunConfig, fold: int) -> int:
    """The seed of fold `fold`'s random streams: distinct for every (seed, fold), reproducible."""
    return config.seed * FOLDS_PER_SEED + fold


def build_training_model(config: RunConfig, image_shape, num_classes: int, sample_images, fold: int,
                         steps_per_epoch: int = 1, store: FoldStore | None = None, multilabel: bool = False):
    seed = fold_seed(config, fold)
    net = build_model(config, image_shape, num_classes, sample_images, steps_per_epoch)
    augment = make_augment_layer(config.augment, seed, steps_per_epoch)
    mix = make_mix_layer(config.mixup, config.cutmix, seed + 1)
    augment.dtype_policy = keras.DTypePolicy("float32")  # augment in float32 even under bf16
    mix.dtype_policy = keras.DTypePolicy("float32")
    return TrainingModel(net, augment, mix, num_classes, config.label_smoothing, store,
                         class_weighted=config.class_weight == "balanced", multilabel=multilabel), net


# -- the engine: one compiled model per config, reused by its folds ---------------------------------

# RunConfig fields no compiled program depends on: folds, seeds and trials that differ only in
# these share an engine. (Their data's shapes and steps per epoch are part of the key too.)
NOT_COMPILED = ("name", "seed", "folds", "limit", "tta", "patience", "keep", "val_every", "devices")


@dataclass
class Engine:
    """A compiled TrainingModel and the predict programs of its net, for one program key."""

    key: tuple
    model: TrainingModel
    net: keras.Model
    steps_per_epoch: int  # of the fold it was compiled for: its schedules count in those steps
    predictors: dict = field(default_factory=dict)  # (policy, rows per call) -> Predictor
    statistics: BatchStatistics | None = None  # BatchNorm recalibration's compiled call

    def fit_schedule(self, config: RunConfig, steps_per_epoch: int) -> None:
        """Run the compiled schedules over a fold of `steps_per_epoch` steps an epoch: the clock
        reaches the schedules' last step at this fold's last step (identity for the fold compiled)."""
        total = config.total_steps(steps_per_epoch)
        self.model.optimizer.schedule_clock.set(0.0, 0.0, config.total_steps(self.steps_per_epoch) / total)

    def predictor(self, policy: str, rows_per_call: int) -> Predictor:
        if (policy, rows_per_call) not in self.predictors:
            self.predictors[policy, rows_per_call] = Predictor(self.net, views_for(policy), view_fill(policy),
                                                               rows_per_call)
        return self.predictors[policy, rows_per_call]


_engine: Engine | None = None  # the last config's engine in this process


def program_key(config: RunConfig, image_shape, num_classes: int, store_rows: int, devices: int = 1,
                multilabel: bool = False) -> tuple:
    """What the compiled programs depend on. Not the steps per epoch: the schedules read a clock
    variable and the alternating flip a steps-per-epoch variable (Engine.fit_schedule)."""
    compiled = {k: v for k, v in config.to_dict().items() if k not in NOT_COMPILED}
    return (keras.backend.backend(), repr(sorted(compiled.items())), tuple(image_shape), num_classes,
            store_capacity(store_rows) if store_rows else 0, devices) + (("multilabel",) if multilabel else ())


def copy_initial_state(source: TrainingModel, target: TrainingModel) -> None:
    """Every variable of a freshly built and compiled model into `target`, a model of the same
    program: weights (whitening and normalisation included), random streams, counters and the
    optimizer's slots. Not the store, which holds data."""
    pairs = [pair for part in ("net", "augment", "mix")
             for pair in zip(getattr(source, part).variables, getattr(target, part).variables, strict=True)]
    pairs += zip(source.optimizer.variables, target.optimizer.variables, strict=True)
    for fresh, kept in pairs:
        if tuple(fresh.shape) != tuple(kept.shape):
            raise RuntimeError(f"engine reuse: {fresh.path} {fresh.shape} does not match {kept.path} {kept.shape}")
        kept.assign(fresh.value)
    target.reset_metrics()


def prepare_engine(config: RunConfig, image_shape, num_classes: int, sample_images, fold: int,
                   steps_per_epoch: int, store_rows: int = 0, multilabel: bool = False) -> Engine:
    """The compiled model for this fold, holding the fold's initial state: the weights its seed
    draws, whitening and normalisation fitted on `sample_images`, fresh optimizer slots and
    random streams. `store_rows`: the rows a FoldStore must hold (0: no store). `multilabel`:
    multi-hot labels, sigmoid outputs and binary cross-entropy (comp.engine.step).

    The last fold's engine when the program key is the same (a freshly built model's state is
    copied in; building traces nothing), else a new one, after clearing the old session.
    """
    global _engine
    devices = local_devices(config.devices)
    key = program_key(config, image_shape, num_classes, store_rows, len(devices), multilabel)
    reuse = _engine is not None and _engine.key == key
    if not reuse:
        _engine = None
        keras.backend.clear_session()  # memory stays flat across configs
        distribute(devices, config.batch_size)  # after clear_session, which forgets it
        if len(devices) > 1:
            announce(len(devices), config.batch_size)
    keras.utils.set_random_seed(fold_seed(config, fold))
    set_precision(config.precision)
    label_shape = (num_classes,) if multilabel else ()
    store = (FoldStore(store_capacity(store_rows), image_shape, name="store", label_shape=label_shape)
             if store_rows and not reuse else None)
    model, net = build_training_model(config, image_shape, num_classes, sample_images, fold, steps_per_epoch, store,
                                      multilabel)
    compile_training_model(model, config, steps_per_epoch)
    if reuse:
        copy_initial_state(model, _engine.model)
    else:
        _engine = Engine(key, model, net, steps_per_epoch)
    _engine.fit_schedule(config, steps_per_epoch)
    return _engine


# -- compile counts (JAX) --------------------------------------------------------------------------

# JAX's events: a program not compiled in this process yet (XLA compiles it, or reads it from
# the persistent cache), and a persistent-cache read. XLA compiled programs - cache hits.
COMPILE_EVENTS = {"/jax/core/compile/backend_compile_duration": "programs",
                  "/jax/compilation_cache/cache_hits": "cache_hits"}
_compile_counts = {name: 0 for name in COMPILE_EVENTS.values()}
_listening = False


def compile_counts() -> dict[str, int]:
    """Programs made and persistent-cache hits so far in this process (JAX; {} elsewhere)."""
    global _listening
    if keras.backend.backend() != "jax":
        return {}
    if not _listening:
        import jax

        def count(event, *args, **kwargs):
            if event in COMPILE_EVENTS:
                _compile_counts[COMPILE_EVENTS[event]] += 1

        jax.monitoring.register_event_listener(count)
        jax.monitoring.register_event_duration_secs_listener(count)
        _listening = True
    return dict(_compile_counts)
