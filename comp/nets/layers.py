"""Keras layers of comp's own, registered so that `keras.models.load_model` finds them.

Imports keras at module level: import this module only after the backend is chosen (comp.nets.models
imports it inside the builders that need it; whoever loads a saved net imports it first).
"""

from __future__ import annotations

import keras
from keras import ops

from comp.nets.lookahead import lookahead_pull


@keras.saving.register_keras_serializable(package="comp")
class AirbenchBatchNorm(keras.layers.BatchNormalization):
    """BatchNorm whose running statistics take part in airbench's lookahead averaging.

    airbench averages every float tensor of the net's state, the BatchNorm running mean and
    variance included, and copies the averages back at each sync and once more at the last step;
    Keras's optimizer sees only trainable variables, so the statistics are averaged here, on
    the same schedule (comp.nets.lookahead), counting this layer's own training calls. The sync of
    step k follows step k's forward pass, as in airbench (there it follows the optimizer step,
    which does not touch the statistics). After `total_steps` training calls the statistics stay
    as they are. Inference is plain BatchNormalization.

    `total_steps` is a variable, not a constant of the compiled step: a fold of another size that
    reuses the compiled programs brings its own (copied in with the fresh model's state), and a
    deadline that shortens a fold moves it (comp.engine.callbacks). A constant froze a full-data
    fit's statistics halfway through when it reused a fold's programs (test accuracy 0.26 against
    0.55 trained alone).
    """

    def __init__(self, lookahead: float = 0.0, total_steps: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.lookahead, self.total_steps = lookahead, max(1, int(total_steps))

    def build(self, input_shape):
        super().build(input_shape)
        shape = (input_shape[self.axis],)
        self.average_mean = self.add_weight(shape=shape, name="average_mean", initializer="zeros",
                                            trainable=False, autocast=False)
        self.average_variance = self.add_weight(shape=shape, name="average_variance", initializer="ones",
                                                trainable=False, autocast=False)
        self.steps = self.add_weight(shape=(), name="steps", initializer="zeros", dtype="int32", trainable=False)
        self.last_step = self.add_weight(shape=(), name="last_step", dtype="int32", trainable=False,
                                         initializer=keras.initializers.Constant(self.total_steps))

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self.lookahead):
            return super().call(inputs, training=training, mask=mask)
        before = [ops.copy(self.moving_mean), ops.copy(self.moving_variance)]  # a copy: a TF variable reads late
        outputs = super().call(inputs, training=training, mask=mask)  # updates the running statistics
        step = self.steps + 1
        self.steps.assign(step)
        last = ops.convert_to_tensor(self.last_step)
        sync, pull = lookahead_pull(step, self.lookahead, last)
        jump = ops.logical_or(sync > 0, ops.equal(step, last))
        for statistic, average, old in zip((self.moving_mean, self.moving_variance),
                                           (self.average_mean, self.average_variance), before):
            current = ops.convert_to_tensor(statistic)
            new_average = average + pull * (current - average)
            average.assign(new_average)
            statistic.assign(ops.where(step > last, old, ops.where(jump, new_average, current)))
        return outputs

    def get_config(self):
        return {**super().get_config(), "lookahead": self.lookahead, "total_steps": self.total_steps}

@keras.saving.register_keras_serializable(package="comp")
class Standardize(keras.layers.Layer):
    """(x - mean) / sqrt(variance) per channel, with mean and variance held as variables.

    What keras.layers.Normalization does, except that Normalization turns its statistics into
    constants of the compiled program (given at construction or adapted alike): every fold, with
    its own statistics, would compile its train and predict steps anew. Here they are
    non-trainable weights, set with set_weights([mean, variance]) after the net is built, so
    folds, seeds and trials of one config share one compiled program (and the persistent cache).
    """

    def build(self, input_shape):
        channels = (input_shape[-1],)
        self.mean = self.add_weight(shape=channels, name="mean", initializer="zeros", trainable=False)
        self.variance = self.add_weight(shape=channels, name="variance", initializer="ones", trainable=False)

    def call(self, inputs):
        mean = ops.cast(self.mean, inputs.dtype)
        scale = ops.cast(ops.rsqrt(ops.maximum(self.variance, keras.config.epsilon() ** 2)), inputs.dtype)
        return (inputs - mean) * scale

    def compute_output_shape(self, input_shape):
        return input_shape
