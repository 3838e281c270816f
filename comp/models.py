"""The model zoo: a registry of pretraining-free networks, built by name from a RunConfig.

Every network takes raw pixels (0..255, any dtype) and returns logits (float32, no softmax),
so a saved `model.keras` is usable on its own: `softmax(model.predict(uint8_images))`.

    baseline    the classic small CNN of competition notebooks
    vgg         stages of Conv-BN-ReLU at 64/128/256/512, configurable depth, width, head
    deep        vgg with 3,3,4,4 convs and a 256 -> 64 head (the classic competition model)
    resnet      a small pre-activation ResNet, practical on a CPU at widths 16-32
    fast        airbench-style speedrun net: frozen patch whitening, Conv-BN-GELU 64/256/256
    fast-large  wider and deeper fast, for the top of the leaderboard
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class ModelSpec:
    build: Callable  # (config, input_shape, num_classes, sample_images) -> keras.Model
    defaults: dict = field(default_factory=dict)  # RunConfig values this model is meant to train with
    summary: str = ""


MODELS: dict[str, ModelSpec] = {}


def register(name: str, summary: str, **defaults):
    def wrap(build):
        MODELS[name] = ModelSpec(build, defaults, summary)
        return build

    return wrap


def model_defaults(name: str) -> dict:
    spec = MODELS.get(name)
    return dict(spec.defaults) if spec else {}


def build_model(config, input_shape, num_classes: int, sample_images: np.ndarray | None = None):
    """The one place a network is made from a config."""
    return MODELS[config.model].build(config, tuple(input_shape), num_classes, sample_images)


# -- shared pieces ---------------------------------------------------------------------------


def _inputs(input_shape):
    import keras

    inputs = keras.Input(shape=input_shape, name="pixels")
    # Pixels arrive as 0..255; scale inside the graph so data stays uint8 until the device.
    return inputs, keras.layers.Rescaling(1.0 / 255.0)(inputs)


def _logits(x, num_classes: int, scale: float = 1.0, initializer="glorot_uniform"):
    import keras

    # float32 logits even under mixed precision: softmax and the loss need the range.
    x = keras.layers.Dense(num_classes, dtype="float32", name="logits",
                           use_bias=scale == 1.0, kernel_initializer=initializer)(x)
    if scale != 1.0:
        x = keras.layers.Rescaling(scale, dtype="float32", name="temperature")(x)
    return x


def _flatten_or_pool(x):
    import keras

    # Flatten keeps the classic heads at 32x32 (2x2 maps); bigger images pool to stay small.
    h, w = x.shape[1], x.shape[2]
    return keras.layers.Flatten()(x) if h * w <= 16 else keras.layers.GlobalAveragePooling2D()(x)


def _dense_head(x, units: list[int], dropout: float):
    import keras

    for n in units:
        x = keras.layers.Dense(n, activation="relu")(x)
        if dropout:
            x = keras.layers.Dropout(dropout)(x)
    return x


def _scaled(width: float, channels: int) -> int:
    return max(4, int(round(channels * width)))


# -- baseline ----------------------------------------------------------------------------------


@register("baseline", "classic small CNN: Conv16-Pool-Drop, 2x Conv32 blocks, Dense 1024", dropout=0.23)
def build_baseline(config, input_shape, num_classes, sample_images=None):
    import keras
    from keras import layers

    inputs, x = _inputs(input_shape)
    dropout = 0.23 if config.dropout is None else config.dropout
    for filters in (16, 32, 32):
        x = layers.Conv2D(_scaled(config.width, filters), 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = _dense_head(x, config.head or [1024], 0.5)  # the classic head: Dense 1024, Dropout 0.5
    return keras.Model(inputs, _logits(x, num_classes), name="baseline")


# -- VGG-style ---------------------------------------------------------------------------------

VGG_WIDTHS = (64, 128, 256, 512)


# BatchNorm statistics forget at 0.9 per step (PyTorch's default) rather than Keras's 0.99: with
# the few hundred steps of a small dataset, 0.99 leaves the inference statistics far behind the
# weights, and validation accuracy sits near chance while training accuracy climbs.
BN_MOMENTUM_DEFAULT = 0.9


def _bn():
    from keras import layers

    return layers.BatchNormalization(momentum=BN_MOMENTUM_DEFAULT)


def _conv_bn_relu(x, filters: int):
    from keras import layers

    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)  # BN's beta is the bias
    x = _bn()(x)
    return layers.Activation("relu")(x)


@register("vgg", "VGG-style Conv-BN stages 64/128/256/512; depth = convs per stage",
          depth=[2, 2, 2, 2], head=[256], dropout=0.3)
def build_vgg(config, input_shape, num_classes, sample_images=None, name="vgg"):
    import keras
    from keras import layers

    inputs, x = _inputs(input_shape)
    depth = list(config.depth or [2, 2, 2, 2])
    dropout = 0.3 if config.dropout is None else config.dropout
    for stage, convs in enumerate(depth):
        filters = _scaled(config.width, VGG_WIDTHS[min(stage, len(VGG_WIDTHS) - 1)])
        for _ in range(convs):
            x = _conv_bn_relu(x, filters)
        if x.shape[1] > 1:  # tiny inputs run out of pixels before stages
            x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout * 0.5)(x)  # light dropout between stages, full dropout in the head
    x = _flatten_or_pool(x)
    x = _dense_head(x, list(config.head or [256]), dropout)
    return keras.Model(inputs, _logits(x, num_classes), name=name)


@register("deep", "vgg with 3,3,4,4 convs and a 256->64 head (the classic competition model)",
          depth=[3, 3, 4, 4], head=[256, 64], dropout=0.3, mixup=0.2)
def build_deep(config, input_shape, num_classes, sample_images=None):
    return build_vgg(config, input_shape, num_classes, sample_images, name="deep")


# -- pre-activation ResNet ---------------------------------------------------------------------


def _preact_block(x, filters: int, stride: int):
    from keras import layers

    shortcut = x
    x = _bn()(x)
    x = layers.Activation("relu")(x)
    if stride != 1 or shortcut.shape[-1] != filters:
        # Project from the pre-activated tensor, as in He et al. (2016), identity mappings.
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = _bn()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    return layers.Add()([x, shortcut])


@register("resnet", "small pre-activation ResNet; depth = blocks per stage, width x16/32/64",
          depth=[2, 2, 2], dropout=0.0, optimizer="sgd", lr=0.05, schedule="onecycle",
          weight_decay=5e-4, augment="flip-crop", batch_size=128)
def build_resnet(config, input_shape, num_classes, sample_images=None):
    import keras
    from keras import layers

    inputs, x = _inputs(input_shape)
    base = _scaled(config.width, 16)
    x = layers.Conv2D(base, 3, padding="same", use_bias=False)(x)
    for stage, blocks in enumerate(config.depth or [2, 2, 2]):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 and x.shape[1] > 1 else 1
            x = _preact_block(x, base * 2**stage, stride)
    x = _bn()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    if config.dropout:
        x = layers.Dropout(config.dropout)(x)
    return keras.Model(inputs, _logits(x, num_classes), name="resnet")


# -- fast: the ideas of the CIFAR-10 speedruns (airbench) -------------------------------------

WHITEN_PATCH = 2  # 2x2 patches: 12 dimensions for RGB, whitened by 12 eigenvector filters (+ negatives)
WHITEN_EPS = 5e-4  # keeps near-zero eigenvalues from blowing the filters up
WHITEN_SAMPLES = 5000  # images used to estimate the patch covariance; more changes nothing
BN_MOMENTUM = 0.6  # short-memory BN statistics: the net changes fast over few epochs
OUTPUT_SCALE = 1 / 9  # airbench's logit temperature: lets SGD use a large learning rate


STATS_CHUNK = 4096  # images per read: float64 copies of a chunk, never of the whole (memory-mapped) set


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of 0..1 pixels, summed chunk by chunk."""
    total, squares, count = 0.0, 0.0, 0
    for start in range(0, len(images), STATS_CHUNK):
        pixels = np.asarray(images[start:start + STATS_CHUNK]).reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total, squares, count = total + pixels.sum(0), squares + np.square(pixels).sum(0), count + len(pixels)
    mean = total / count
    return mean, np.maximum(squares / count - mean**2, 0.0) + 1e-6


def whitening_kernel(images: np.ndarray, mean, variance) -> tuple[np.ndarray, np.ndarray]:
    """Conv kernel (2,2,C,2*2*2*C) that whitens 2x2 patches, and its zero bias.

    Eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue), and their negatives so
    that the GELU after it keeps both signs: airbench's frozen first layer.
    """
    rng = np.random.default_rng(0)
    chosen = images[rng.choice(len(images), size=min(WHITEN_SAMPLES, len(images)), replace=False)]
    x = (chosen.astype(np.float64) / 255.0 - mean) / np.sqrt(variance)
    k = WHITEN_PATCH
    h, w, c = x.shape[1:]
    patches = np.stack([x[:, i:h - k + 1 + i, j:w - k + 1 + j, :] for i in range(k) for j in range(k)], axis=3)
    patches = patches.reshape(-1, k * k * c)  # (dy, dx, channel) order = the Keras kernel's order
    covariance = np.cov(patches, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors.T / np.sqrt(eigenvalues[:, None] + WHITEN_EPS)
    filters = np.concatenate([filters, -filters], axis=0)  # (2*k*k*c, k*k*c)
    kernel = filters.reshape(-1, k, k, c).transpose(1, 2, 3, 0).astype(np.float32)
    return kernel, np.zeros(kernel.shape[-1], np.float32)


def _fan_in_uniform():
    """PyTorch's default conv and linear init, U(+-1/sqrt(fan_in)), which airbench's recipe was tuned with.

    A third of the variance of Keras's Glorot for a square 3x3 conv. It matters behind BatchNorm:
    the weights' scale sets the effective learning rate (lr / |w|^2).
    """
    import keras

    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


def _identity_init(conv) -> None:
    """Make a conv's first in_channels filters copy their input channel (airbench's dirac init).

    An implicit residual path: the plain stack starts close to the identity and trains like a
    ResNet from the first step. On a CPU ablation (bench/RESULTS.md) it added about 0.5 points.
    """
    kernel = np.array(conv.get_weights()[0])
    k_h, k_w, channels_in, channels_out = kernel.shape
    n = min(channels_in, channels_out)
    kernel[..., :n] = 0.0
    kernel[k_h // 2, k_w // 2, np.arange(n), np.arange(n)] = 1.0
    conv.set_weights([kernel])


def _conv_group(x, filters: int, convs: int):
    from keras import layers

    for i in range(convs):
        conv = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=_fan_in_uniform())
        x = conv(x)
        _identity_init(conv)
        if i == 0 and x.shape[1] > 1:
            x = layers.MaxPooling2D()(x)  # pool right after the first conv: compute on the smaller map
        # scale=False: a frozen BN weight of 1 (airbench); only the bias trains.
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, scale=False)(x)
        x = layers.Activation("gelu")(x)
    return x


def _build_fast(config, input_shape, num_classes, sample_images, widths, convs, name):
    import keras
    from keras import layers

    if sample_images is None:
        # Without data (e.g. rebuilding for a shape check) the whitening is the identity-ish random init.
        sample_images = np.random.default_rng(0).integers(0, 256, (64, *input_shape), dtype=np.uint8)
    from .layers import Standardize

    mean, variance = channel_stats(sample_images)
    inputs, x = _inputs(input_shape)
    normalize = Standardize(name="normalize")  # the fold's statistics as variables: one program for all folds
    x = normalize(x)
    normalize.set_weights([mean.astype(np.float32), variance.astype(np.float32)])
    kernel, bias = whitening_kernel(sample_images, mean, variance)
    whiten = layers.Conv2D(kernel.shape[-1], WHITEN_PATCH, padding="valid", trainable=False, name="whiten")
    x = whiten(x)
    whiten.set_weights([kernel, bias])
    x = layers.Activation("gelu")(x)
    for filters in widths:
        x = _conv_group(x, _scaled(config.width, filters), convs)
    x = layers.GlobalMaxPooling2D()(x)  # airbench's final MaxPool(3) over the 3x3 map
    if config.dropout:
        x = layers.Dropout(config.dropout)(x)
    logits = _logits(x, num_classes, scale=OUTPUT_SCALE, initializer=_fan_in_uniform())
    return keras.Model(inputs, logits, name=name)


# airbench94's recipe translated to Keras's mean-loss SGD at batch 512: its lr of 11.5 per 1024
# examples on a summed loss is 0.75 here; its decay of 0.0153 per 1024 examples, amplified by
# Nesterov momentum 0.85, is Keras's decoupled weight_decay 8.9e-3 (Keras multiplies it by lr).
# Also airbench's: lookahead averaging at 0.95 per step (synced every 5 steps) and alternating
# flips with pad-4 crops.
FAST_TRAINING = dict(
    optimizer="sgd", momentum=0.85, lr=0.75, schedule="onecycle", warmup_epochs=0.0,
    weight_decay=8.9e-3, label_smoothing=0.2, augment="alt-flip-crop", tta="flip-shift",
    batch_size=512, keep="last", ema=0.0, lookahead=0.95, dropout=0.0,
)


@register("fast", "speedrun net: frozen patch whitening, identity-init Conv-BN-GELU 64/256/256, "
          "SGD + lookahead, label smoothing, alternating flips",
          epochs=16, **FAST_TRAINING)
def build_fast(config, input_shape, num_classes, sample_images=None):
    return _build_fast(config, input_shape, num_classes, sample_images, (64, 256, 256), 2, "fast")


# 64 epochs with cutout: on an H200, 5-fold OOF 0.9139, 0.9200 with TTA, in 239 s for the 5 folds
# (bench/RESULTS.md); with the older recipe 64 epochs + cutout beat 32 without (0.9030 vs 0.8990).
@register("fast-large", "wider, deeper fast (128/384/384, 3 convs per group) for the top of the leaderboard",
          **(FAST_TRAINING | {"epochs": 64, "augment": "alt-flip-crop,cutout"}))
def build_fast_large(config, input_shape, num_classes, sample_images=None):
    return _build_fast(config, input_shape, num_classes, sample_images, (128, 384, 384), 3, "fast-large")
