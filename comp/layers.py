"""Keras layers of comp's own, registered so that `keras.models.load_model` finds them.

Imports keras at module level: import this module only after the backend is chosen (comp.models
imports it inside the builders that need it; whoever loads a saved net imports it first).
"""

from __future__ import annotations

import keras
from keras import ops


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
