"""Optimizers and learning-rate schedules, and the one compile call for training."""

from __future__ import annotations

import math

import keras
from keras import ops

from comp.config.run_config import RunConfig
from comp.engine.feed import TF_STEPS_PER_EXECUTION
from comp.engine.keras_private import variable_index
from comp.engine.step import TrainingModel
from comp.nets.lookahead import LOOKAHEAD_EVERY, lookahead_pull


# -- optimiser and schedule --------------------------------------------------------------------


ONE_CYCLE_START = 0.2  # airbench's triangle starts from a fifth of the peak (no dead first steps)


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from START*peak to the peak, then linear decay to end*peak (airbench's triangle).

    Step s (from 0) of T: 0.2 + 0.8 s/W before the peak step W, then 1 - (1 - end)(s - W)/(T - W),
    held at end*peak after T: airbench's get_lr, which its LambdaLR evaluates at the same s.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, end: float = 0.07):
        self.peak, self.warmup_steps, self.total_steps = peak, max(1, warmup_steps), max(2, total_steps)
        self.end = end

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = ONE_CYCLE_START + (1.0 - ONE_CYCLE_START) * step / self.warmup_steps
        progress_down = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        down = 1.0 - (1.0 - self.end) * ops.minimum(1.0, progress_down)
        return self.peak * ops.where(step < self.warmup_steps, up, down)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "end": self.end}


class ScheduleClock:
    """Where the schedules stand: the optimizer's step s reads as the schedule's step
    at + (s - cut) * rate wherever a schedule reads the step (learning rate, lookahead, sgd-torch's
    stops), from a variable (cut, at, rate). It starts as the identity, (0, 0, 1); a fold that gets
    fewer epochs than planned (its deadline) runs the rest of its schedule faster, so it still ends
    annealed (comp.engine.callbacks). A variable, so the compiled step never changes with it; an
    optimizer variable, so it is checkpointed with the optimizer and mapped inside its update
    (model variables are not, on JAX).
    """

    START = (0.0, 0.0, 1.0)

    def __init__(self, total: int = 1):
        self.variable = None  # made by attach(), once the optimizer exists
        self.total = total  # the schedules' last step, in the clock's steps
    def attach(self, optimizer) -> None:
        self.variable = optimizer.add_variable(shape=(3,), name="schedule_clock", initializer=lambda shape, dtype:
                                               ops.convert_to_tensor(self.START, "float32"))
        optimizer.schedule_clock = self

    def step(self, optimizer_step):
        """The schedule's step at `optimizer_step` (exact while the clock is the identity)."""
        return self.variable[1] + (ops.cast(optimizer_step, "float32") - self.variable[0]) * self.variable[2]

    def set(self, cut: float, at: float, rate: float) -> None:
        self.variable.assign(ops.convert_to_tensor([cut, at, rate], "float32"))


class OnClock(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` read at the schedule clock's step, not the optimizer's."""

    def __init__(self, schedule, clock: ScheduleClock):
        self.schedule, self.clock = schedule, clock

    def __call__(self, step):
        return self.schedule(self.clock.step(step))

    def get_config(self):
        return self.schedule.get_config()


def make_schedule(config: RunConfig, steps_per_epoch: int, clock=None):
    total = config.total_steps(steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.lr * 1e-2 if warmup else config.lr,
            decay_steps=max(1, total - warmup), alpha=0.0,
            warmup_target=config.lr if warmup else None, warmup_steps=warmup)
    elif config.schedule == "onecycle":
        schedule = OneCycle(config.lr, warmup or int(config.lr_peak_at * total), total, config.lr_end)
    else:
        return config.lr
    return schedule if clock is None else OnClock(schedule, clock)


def is_batchnorm_bias(variable) -> bool:
    """BatchNorm's beta: the nets' only bias apart from a whitening layer's (airbench's "norm" group)."""
    return variable.name == "beta"


def is_whitening_bias(variable) -> bool:
    return variable.path.split("/")[-2:] == ["whiten", "bias"]


class TorchSGD(keras.optimizers.Optimizer):
    """PyTorch's SGD with Nesterov momentum, as airbench runs it, from Keras's public optimizer API.

    Per variable v with gradient g (of the mean loss), at step t:
        d = g + l2_v * v;   buf = momentum * buf + d;   v -= lr_t * scale_v * (d + momentum * buf)
    Two things set it apart from keras.optimizers.SGD(nesterov=True), and airbench was tuned with
    both: the learning rate multiplies the whole step, not each gradient as it enters the buffer
    (they differ while the lr changes, i.e. always under airbench's schedule), and weight decay is
    an L2 term that goes through the momentum (Keras's is decoupled: 1/(1 - momentum) = 6.7x weaker
    per unit at momentum 0.85).

    scale_v = `bias_lr_scale` for BatchNorm biases, 1 otherwise; l2_v = `l2` / scale_v, so that a
    bias's decay per step equals the other weights' (airbench's "scales lr but not weight decay").
    A whitening-layer bias stops (no step, no decay, no momentum) from step `whiten_bias_steps`, and
    every variable from step `total_steps`: the steps that finish a fractional last epoch do nothing.
    Steps are the schedule clock's (`clock`, comp.engine.step.schedule_step) when given.
    """

    def __init__(self, learning_rate, momentum: float = 0.85, l2: float = 0.0, bias_lr_scale: float = 1.0,
                 whiten_bias_steps: int | None = None, total_steps: int | None = None, name="torch_sgd",
                 clock=None, **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum, self.l2, self.bias_lr_scale = momentum, l2, bias_lr_scale
        self.whiten_bias_steps, self.total_steps, self.clock = whiten_bias_steps, total_steps, clock

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Per variable (in build order): (lr multiplier, L2 coefficient, step from which it stays).
        self.rules = []
        for variable in variables:
            scale = self.bias_lr_scale if is_batchnorm_bias(variable) else 1.0
            stop = self.whiten_bias_steps if is_whitening_bias(variable) else None
            stops = [s for s in (stop, self.total_steps) if s is not None]
            self.rules.append((scale, self.l2 / scale, min(stops) if stops else None))

    def update_step(self, gradient, variable, learning_rate):
        # Keras's documented way to find a variable's slots (its Optimizer docstring's SGD example).
        index = variable_index(self, variable)
        scale, l2, stop = self.rules[index]
        buffer = self.momentums[index]
        gradient = ops.cast(gradient, variable.dtype)
        decayed = gradient + l2 * variable if l2 else gradient
        new_buffer = self.momentum * buffer + decayed
        new_variable = variable - ops.cast(learning_rate * scale, variable.dtype) * (decayed + self.momentum * new_buffer)
        if stop is not None:
            step = self.iterations if self.clock is None else self.clock.step(self.iterations)
            moving = step < stop
            new_buffer = ops.where(moving, new_buffer, ops.convert_to_tensor(buffer))
            new_variable = ops.where(moving, new_variable, ops.convert_to_tensor(variable))
        self.assign(buffer, new_buffer)
        self.assign(variable, new_variable)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2": self.l2, "bias_lr_scale": self.bias_lr_scale,
                "whiten_bias_steps": self.whiten_bias_steps, "total_steps": self.total_steps}


def with_lookahead(optimizer_class, decay: float, total_steps: int, clock=None):
    """`optimizer_class` plus airbench's lookahead weight averaging (schedule: comp.nets.lookahead).

    Each variable's average is an optimizer slot (stored and checkpointed with the others),
    updated in the public `update_step` right after the variable's own step: elementwise, so
    variable by variable equals airbench's whole-net sync. After the last step the weights are
    the last average (`finalize_variable_values`, as airbench ends).
    """

    class Lookahead(optimizer_class):
        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            self.lookahead_averages = self.add_optimizer_variables(variables, "lookahead")

        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate)
            average = self.lookahead_averages[variable_index(self, variable)]
            step = self.iterations + 1  # the step being applied, from 1
            at = None if clock is None else clock.step(step)
            sync, pull = lookahead_pull(step, decay, total_steps, at)
            new_average = average + ops.cast(pull, variable.dtype) * (variable - average)
            self.assign(average, new_average)
            self.assign(variable, variable + ops.cast(sync, variable.dtype) * (new_average - variable))

        def finalize_variable_values(self, var_list):
            super().finalize_variable_values(var_list)
            # Before the first sync the average is still empty (zeros): keep the weights.
            if int(ops.convert_to_numpy(self.iterations)) >= LOOKAHEAD_EVERY:
                for variable, average in zip(var_list, self.lookahead_averages):
                    variable.assign(average)

    return Lookahead


def with_bias_lr_scale(optimizer_class, scale: float):
    """`optimizer_class` whose steps on BatchNorm biases are `scale` times larger.

    For SGD with momentum, scaling a variable's gradient is scaling its learning rate; decoupled
    weight decay does not see the gradient, so biases still decay like every other weight.
    This is airbench's bias_scaler: the nets have no other bias, and BN biases set the
    activation thresholds, which must move much faster than the scale-free conv weights.
    """

    class BiasScaled(optimizer_class):
        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            self.scaled = [is_batchnorm_bias(variable) for variable in variables]

        def update_step(self, gradient, variable, learning_rate):
            if self.scaled[variable_index(self, variable)]:
                gradient = gradient * scale
            super().update_step(gradient, variable, learning_rate)

    return BiasScaled


def make_optimizer(config: RunConfig, steps_per_epoch: int):
    """The run's optimizer, its schedules on a ScheduleClock (`optimizer.schedule_clock`)."""
    clock = ScheduleClock(config.total_steps(steps_per_epoch))
    lr = make_schedule(config, steps_per_epoch, clock)
    total = config.total_steps(steps_per_epoch)
    decay = config.weight_decay or None
    if config.optimizer == "sgd-torch":
        whiten_bias_steps = math.ceil(round(config.whiten_bias_epochs * steps_per_epoch, 6))
        optimizer_class, options = TorchSGD, {
            "momentum": config.momentum, "l2": config.weight_decay, "bias_lr_scale": config.bias_lr_scale,
            "whiten_bias_steps": whiten_bias_steps, "total_steps": total, "clock": clock}
        decay = None  # the L2 term above, not Keras's decoupled decay
    elif config.optimizer == "sgd":
        optimizer_class, options = keras.optimizers.SGD, {"momentum": config.momentum, "nesterov": True}
        if config.bias_lr_scale != 1.0:
            optimizer_class = with_bias_lr_scale(optimizer_class, config.bias_lr_scale)
    elif config.optimizer == "adamw":
        optimizer_class, options = keras.optimizers.AdamW, {}
        decay = config.weight_decay or 1e-4
    else:
        optimizer_class, options = keras.optimizers.Adam, {}
    if config.lookahead:
        optimizer_class = with_lookahead(optimizer_class, config.lookahead, total, clock)
    elif config.ema:
        options |= {"use_ema": True, "ema_momentum": config.ema}
    optimizer = optimizer_class(lr, weight_decay=decay, **options)
    clock.attach(optimizer)
    return optimizer


def jit_compile_setting(config: RunConfig):
    """RunConfig.jit (auto | on | off) as the value Model.compile takes."""
    return {"auto": "auto", "on": True, "off": False}[config.jit]


def compile_training_model(model: TrainingModel, config: RunConfig, steps_per_epoch: int) -> None:
    """The one compile call for training (train_fold and the throughput benchmark share it).

    The optimizer's variables are made here, not by fit's first step: a checkpoint can be loaded
    into them, and fit then has nothing left to build by tracing the model on a sample batch.
    """
    steps_per_execution = TF_STEPS_PER_EXECUTION if keras.backend.backend() == "tensorflow" else 1
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=jit_compile_setting(config),
                  steps_per_execution=steps_per_execution)
    model.optimizer.build(model.trainable_variables)
