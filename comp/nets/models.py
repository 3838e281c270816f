"""The model zoo: a registry of pretraining-free networks, built by name from a RunConfig.

Every network takes raw pixels (0..255, any dtype) and returns logits (float32, no softmax),
so a saved `model.keras` is usable on its own: `softmax(model.predict(uint8_images))`.

    baseline    the classic small CNN of competition notebooks
    vgg         stages of Conv-BN-ReLU at 64/128/256/512, configurable depth, width, head
    deep        vgg with 3,3,4,4 convs and a 256 -> 64 head (the classic competition model)
    resnet      a small pre-activation ResNet, practical on a CPU at widths 16-32
    fast        airbench-style speedrun net: frozen patch whitening, Conv-BN-GELU 64/256/256
    fast-large  wider and deeper fast, for the top of the leaderboard
    airbench94  airbench94's net and recipe exactly (KellerJordan/cifar10-airbench, legacy/airbench94.py)
    airbench96  airbench96's residual 128/384/512 net and recipe exactly (legacy/airbench96.py)

Sizes: resnet and the whitened nets (fast, fast-large, airbench94/96) follow the input size. Up to
64x64 pixels their stem is the 32-px one (a 64-px image costs 4-4.5x a 32-px one); above, a strided
stem and extra pooling halve the image until the body sees at most 64x64 pixels (`input_halvings`),
so from 16 to 256 px (any aspect) their forward MACs stay within MAX_MACS_RATIO of the 32-px
net's: 4x for the body, the rest from the stem's full-resolution conv and from the floors of the
valid 2x2 whitening and of each pooling, which leave relatively larger maps. Beyond 256 px only
the stem's one strided conv grows with the area. Their heads pool globally.
The classic CNNs (baseline, vgg, deep) take any size unchanged: their compute grows with the area.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class ModelSpec:
    build: Callable  # (config, input_shape, num_classes, sample_images, steps_per_epoch) -> keras.Model
    defaults: dict = field(default_factory=dict)  # RunConfig values this model is meant to train with
    summary: str = ""
    sizes: str = ""  # the input sizes the net suits (comp train --list-models)


MODELS: dict[str, ModelSpec] = {}


def register(name: str, summary: str, sizes: str, **defaults):
    def wrap(build):
        MODELS[name] = ModelSpec(build, defaults, summary, sizes)
        return build

    return wrap


def model_defaults(name: str) -> dict:
    spec = MODELS.get(name)
    return dict(spec.defaults) if spec else {}


def build_model(config, input_shape, num_classes: int, sample_images: np.ndarray | None = None,
                steps_per_epoch: int | None = None):
    """The one place a network is made from a config.

    `sample_images`: the training rows (whitening is fitted on them); `steps_per_epoch`: the
    training's, for nets that average their BatchNorm statistics along the schedule (airbench);
    without it, the full batches of `sample_images`.
    """
    if steps_per_epoch is None:
        rows = len(sample_images) if sample_images is not None else config.batch_size
        steps_per_epoch = max(1, rows // config.batch_size)
    return MODELS[config.model].build(config, tuple(input_shape), num_classes, sample_images, steps_per_epoch)


def forward_macs(net) -> int:
    """Multiply-adds of one image through the net's convolutions and dense layers (no BN, pooling or
    activations), from the layers' output shapes: how speedrun papers count a net's cost."""
    import keras

    total = 0
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            out_h, out_w = layer.output.shape[1:3]
            total += out_h * out_w * channels_out * kernel_h * kernel_w * channels_in
        elif isinstance(layer, keras.layers.Dense):
            total += layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


# -- shared pieces ---------------------------------------------------------------------------

# The resolution-following nets run their body on at most this many pixels: 4x a 32-px image's
# compute, which still buys the accuracy of upscaled inputs (a 64-px image runs at full resolution).
MAX_BODY_AREA = 64 * 64
MAX_MACS_RATIO = 5.2  # the most a 16-256 px input costs over a 32-px one (measured; tests/test_models_augment.py)
FOLLOWS_SIZE = ("any, best 32-256 px: up to 64x64 at full resolution, larger inputs halved by the stem "
                f"to <=64x64 (forward MACs at most {MAX_MACS_RATIO}x the 32-px net's)")
CLASSIC_SIZES = "any; compute (and baseline's Flatten head) grow with the image area: <=64 px on a CPU"


def input_halvings(input_shape) -> int:
    """How often the stem halves an image so that the body sees at most MAX_BODY_AREA pixels
    (0 up to 64x64: no change to the stem)."""
    height, width = input_shape[:2]
    halvings = 0
    while height * width > MAX_BODY_AREA * 4**halvings:
        halvings += 1
    return halvings


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


@register("baseline", "classic small CNN: Conv16-Pool-Drop, 2x Conv32 blocks, Dense 1024", CLASSIC_SIZES,
          dropout=0.23)
def build_baseline(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
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


@register("vgg", "VGG-style Conv-BN stages 64/128/256/512; depth = convs per stage", CLASSIC_SIZES,
          depth=[2, 2, 2, 2], head=[256], dropout=0.3)
def build_vgg(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None, name="vgg"):
    import keras
    from keras import layers

    inputs, x = _inputs(input_shape)
    depth = list(config.depth or [2, 2, 2, 2])
    dropout = 0.3 if config.dropout is None else config.dropout
    for stage, convs in enumerate(depth):
        filters = _scaled(config.width, VGG_WIDTHS[min(stage, len(VGG_WIDTHS) - 1)])
        for _ in range(convs):
            x = _conv_bn_relu(x, filters)
        if min(x.shape[1:3]) > 1:  # tiny inputs (or a narrow side) run out of pixels before stages
            x = layers.MaxPooling2D()(x)
        x = layers.Dropout(dropout * 0.5)(x)  # light dropout between stages, full dropout in the head
    x = _flatten_or_pool(x)
    x = _dense_head(x, list(config.head or [256]), dropout)
    return keras.Model(inputs, _logits(x, num_classes), name=name)


@register("deep", "vgg with 3,3,4,4 convs and a 256->64 head (the classic competition model)", CLASSIC_SIZES,
          depth=[3, 3, 4, 4], head=[256, 64], dropout=0.3, mixup=0.2)
def build_deep(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
    return build_vgg(config, input_shape, num_classes, sample_images, name="deep")


# -- pre-activation ResNet ---------------------------------------------------------------------


# Above this many pixels a block's strided 1x1 projection subsamples first (see _preact_block).
STRIDED_PROJECTION_MAX_AREA = 32 * 32


def _preact_block(x, filters: int, stride: int):
    from keras import layers

    shortcut = x
    x = _bn()(x)
    x = layers.Activation("relu")(x)
    if stride != 1 or shortcut.shape[-1] != filters:
        # Project from the pre-activated tensor, as in He et al. (2016), identity mappings.
        projected, projection_stride = x, stride
        if stride != 1 and x.shape[1] * x.shape[2] > STRIDED_PROJECTION_MAX_AREA:
            # The same convolution as a strided 1x1 conv: TensorFlow 2.21's oneDNN CPU kernels corrupt
            # memory (a segfault) training a strided 1x1 conv on maps of 48x48 px and more with few
            # channels (4-8: widths up to 0.5), so every other pixel is taken first.
            projected, projection_stride = layers.MaxPooling2D(1, strides=stride)(x), 1
        shortcut = layers.Conv2D(filters, 1, strides=projection_stride, use_bias=False)(projected)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = _bn()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    return layers.Add()([x, shortcut])


@register("resnet", "small pre-activation ResNet; depth = blocks per stage, width x16/32/64", FOLLOWS_SIZE,
          depth=[2, 2, 2], dropout=0.0, optimizer="sgd", lr=0.05, schedule="onecycle",
          weight_decay=5e-4, augment="flip-crop", batch_size=128)
def build_resnet(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
    import keras
    from keras import layers

    inputs, x = _inputs(input_shape)
    base = _scaled(config.width, 16)
    halvings = input_halvings(input_shape)
    # Above 64x64 an ImageNet-style stem: a strided conv, then max pooling for each further halving.
    x = layers.Conv2D(base, 3, strides=2 if halvings else 1, padding="same", use_bias=False)(x)
    for _ in range(halvings - 1):
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
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
WHITEN_SAMPLES = 5000  # 32-px images used to estimate the patch covariance; more changes nothing
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


def _patches(images: np.ndarray, mean, variance) -> np.ndarray:
    """Every 2x2 patch (stride 1) of the normalised images, flattened in (dy, dx, channel) order,
    the Keras kernel's order: (images * (H-1) * (W-1), 12)."""
    x = (images.astype(np.float64) / 255.0 - mean) / np.sqrt(variance)
    k = WHITEN_PATCH
    h, w, c = x.shape[1:]
    patches = np.stack([x[:, i:h - k + 1 + i, j:w - k + 1 + j, :] for i in range(k) for j in range(k)], axis=3)
    return patches.reshape(-1, k * k * c)


def _whitening_filters(eigenvalues: np.ndarray, eigenvectors: np.ndarray, channels: int) -> np.ndarray:
    """Conv kernel (2,2,C,2*12): each eigenvector scaled by 1/sqrt(eigenvalue), then their negatives,
    so that the GELU after it keeps both signs: airbench's frozen first layer."""
    k = WHITEN_PATCH
    filters = eigenvectors.T / np.sqrt(eigenvalues[:, None] + WHITEN_EPS)
    filters = np.concatenate([filters, -filters], axis=0)  # (2*k*k*c, k*k*c)
    return filters.reshape(-1, k, k, channels).transpose(1, 2, 3, 0).astype(np.float32)


def whitening_rows(images) -> int:
    """How many images the whitening is fitted on: WHITEN_SAMPLES at 32 px or less, fewer larger
    images (as many pixels in all), so the float64 patches stay about 0.5 GB at any size."""
    height, width = images.shape[1:3]
    return max(1, min(WHITEN_SAMPLES, WHITEN_SAMPLES * 32 * 32 // (height * width)))


def whitening_kernel(images: np.ndarray, mean, variance) -> tuple[np.ndarray, np.ndarray]:
    """`fast`'s whitening conv kernel and its zero bias: eigenvectors of the patch covariance of
    WHITEN_SAMPLES random images."""
    rng = np.random.default_rng(0)
    chosen = images[rng.choice(len(images), size=min(whitening_rows(images), len(images)), replace=False)]
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(_patches(chosen, mean, variance), rowvar=False))
    kernel = _whitening_filters(eigenvalues, eigenvectors, images.shape[-1])
    return kernel, np.zeros(kernel.shape[-1], np.float32)


def airbench_whitening_kernel(images: np.ndarray, mean, variance) -> tuple[np.ndarray, np.ndarray]:
    """airbench's whitening exactly: the first WHITEN_SAMPLES rows in stored order, the patches'
    uncentred second moment P'P/n (not a covariance), eigenvectors by descending eigenvalue."""
    patches = _patches(images[:whitening_rows(images)], mean, variance)
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / len(patches))
    kernel = _whitening_filters(eigenvalues[::-1], eigenvectors[:, ::-1], images.shape[-1])
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


def _fast_norm():
    from keras import layers

    # scale=False: a frozen BN weight of 1 (airbench); only the bias trains.
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, scale=False)


def _conv_group(x, filters: int, convs: int, norm: Callable = _fast_norm, residual: bool = False):
    """Conv-BN-GELU x convs, pooled after the first conv. `residual` (airbench96): the first conv's
    output is added back before the last GELU, so the later convs learn a correction to it."""
    from keras import layers

    shortcut = None
    for i in range(convs):
        conv = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer=_fan_in_uniform())
        x = conv(x)
        _identity_init(conv)
        if i == 0 and min(x.shape[1:3]) > 1:  # a narrow side would pool to nothing
            x = layers.MaxPooling2D()(x)  # pool right after the first conv: compute on the smaller map
        x = norm()(x)
        if residual and i == convs - 1 and i > 0:
            x = layers.Add()([x, shortcut])
        x = layers.Activation("gelu")(x)
        if i == 0:
            shortcut = x
    return x


def _whitened_stem(input_shape, sample_images, whitening: Callable, bias_trains: bool = False):
    """(inputs, features): pixels, normalised by the data's channel statistics, through the 2x2
    patch-whitening conv (kernel fitted by `whitening`, never trained) and a GELU.

    Above 64x64 pixels the whitening conv strides 2 (non-overlapping patches: an invertible change
    of basis, so the first halving loses nothing) and max pooling does any further halving."""
    from keras import layers

    if sample_images is None:
        # Without data (e.g. rebuilding for a shape check) the whitening is the identity-ish random init.
        sample_images = np.random.default_rng(0).integers(0, 256, (64, *input_shape), dtype=np.uint8)
    from comp.nets.layers import Standardize  # imports keras: here, not at module top

    mean, variance = channel_stats(sample_images)
    inputs, x = _inputs(input_shape)
    normalize = Standardize(name="normalize")  # the fold's statistics as variables: one program for all folds
    x = normalize(x)
    normalize.set_weights([mean.astype(np.float32), variance.astype(np.float32)])
    kernel, bias = whitening(sample_images, mean, variance)
    halvings = input_halvings(input_shape)
    whiten = layers.Conv2D(kernel.shape[-1], WHITEN_PATCH, strides=2 if halvings else 1, padding="valid",
                           trainable=bias_trains, name="whiten", dtype="float32")
    x = whiten(x)
    whiten.set_weights([kernel, bias])
    whiten.kernel.trainable = False  # the bias alone may train (airbench: its first epochs)
    x = layers.Activation("gelu")(x)
    for _ in range(halvings - 1):
        x = layers.MaxPooling2D()(x)
    return inputs, x


def _max_pooled_logits(inputs, x, config, num_classes: int, name: str):
    import keras
    from keras import layers

    x = layers.GlobalMaxPooling2D()(x)  # airbench's final MaxPool(3) over the 3x3 map
    if config.dropout:
        x = layers.Dropout(config.dropout)(x)
    logits = _logits(x, num_classes, scale=OUTPUT_SCALE, initializer=_fan_in_uniform())
    return keras.Model(inputs, logits, name=name)


def _build_fast(config, input_shape, num_classes, sample_images, widths, convs, name):
    inputs, x = _whitened_stem(input_shape, sample_images, whitening_kernel)
    for filters in widths:
        x = _conv_group(x, _scaled(config.width, filters), convs)
    return _max_pooled_logits(inputs, x, config, num_classes, name)


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
          "SGD + lookahead, label smoothing, alternating flips", FOLLOWS_SIZE,
          epochs=16, **FAST_TRAINING)
def build_fast(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
    return _build_fast(config, input_shape, num_classes, sample_images, (64, 256, 256), 2, "fast")


# 64 epochs with cutout: on an H200, 5-fold OOF 0.9139, 0.9200 with TTA, in 239 s for the 5 folds
# (bench/RESULTS.md); with the older recipe 64 epochs + cutout beat 32 without (0.9030 vs 0.8990).
@register("fast-large", "wider, deeper fast (128/384/384, 3 convs per group) for the top of the leaderboard",
          FOLLOWS_SIZE, **(FAST_TRAINING | {"epochs": 64, "augment": "alt-flip-crop,cutout"}))
def build_fast_large(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
    return _build_fast(config, input_shape, num_classes, sample_images, (128, 384, 384), 3, "fast-large")


# -- airbench94 / airbench96: the reference recipes, every hyperparameter ------------------------
# From KellerJordan/cifar10-airbench legacy/airbench94.py and legacy/airbench96.py (read for
# /work/notes/airbench-spec.md). Where that spec corrected issue 14's table, the reference wins:
# the whitening bias trains at 1x lr (not 64x), airbench96's BatchNorm momentum is PyTorch's
# default (Keras 0.9, not 0.6), and airbench96 has 9.92M parameters in PyTorch's count.

AIRBENCH_BN_EPSILON = 1e-12  # airbench's BatchNorm eps
AIRBENCH_MOMENTUM = 0.85  # Nesterov momentum of both recipes
AIRBENCH_BATCH = 1024
TRAINED_WHITENING_BIAS = ("airbench94", "airbench96")  # the nets whose whitening bias may train


def _airbench_recipe(hyp_lr: float, hyp_weight_decay: float, epochs: float, peak_at: float, end: float,
                     augment: str) -> dict:
    """RunConfig values of an airbench recipe from its `hyp` dict's numbers.

    airbench sums the loss over the batch and divides its lr "per 1024 examples" by
    1024 * (1 + 1/(1 - momentum)); Keras averages the loss, so the same steps need
    lr = hyp_lr / (1 + 1/(1 - momentum)) at batch 1024 (94: 1.5, 96: 1.173913), and its decay
    (weight_decay * batch / the same scale, coupled through momentum, the same for every group)
    is an L2 term of hyp_weight_decay / hyp_lr on the mean gradient (sgd-torch's weight_decay).
    """
    return dict(
        optimizer="sgd-torch", momentum=AIRBENCH_MOMENTUM, lr=round(hyp_lr / (1 + 1 / (1 - AIRBENCH_MOMENTUM)), 10),
        weight_decay=hyp_weight_decay / hyp_lr, bias_lr_scale=64.0, whiten_bias_epochs=3.0,
        schedule="onecycle", warmup_epochs=0.0, lr_peak_at=peak_at, lr_end=end, epochs=epochs,
        batch_size=AIRBENCH_BATCH, label_smoothing=0.2, lookahead=0.95, ema=0.0, keep="last", dropout=0.0,
        augment=augment, tta="airbench",
    )


def _airbench_norm(config, steps_per_epoch: int, momentum: float) -> Callable:
    """airbench's BatchNorm: eps 1e-12, frozen scale of 1; with lookahead, statistics averaged too."""
    from keras import layers

    options = dict(momentum=momentum, epsilon=AIRBENCH_BN_EPSILON, scale=False)
    if not config.lookahead:
        return lambda: layers.BatchNormalization(**options)
    from comp.nets.layers import AirbenchBatchNorm  # imports keras: here, not at module top

    total = config.total_steps(steps_per_epoch)
    return lambda: AirbenchBatchNorm(lookahead=config.lookahead, total_steps=total, **options)


def _build_airbench(config, input_shape, num_classes, sample_images, steps_per_epoch, widths, convs,
                    bn_momentum, residual, name):
    inputs, x = _whitened_stem(input_shape, sample_images, airbench_whitening_kernel,
                               bias_trains=config.whiten_bias_epochs > 0)
    norm = _airbench_norm(config, steps_per_epoch, bn_momentum)
    for filters in widths:
        x = _conv_group(x, _scaled(config.width, filters), convs, norm, residual)
    return _max_pooled_logits(inputs, x, config, num_classes, name)


# 9.9 epochs: ceil(9.9 * 48) = 476 steps on 50,000 rows; the peak at 23%, down to 0.07 of it.
@register("airbench94", "airbench94 exactly: 64/256/256 net, trained whitening bias, BN eps 1e-12, "
          "PyTorch-style Nesterov SGD, 64x BN-bias lr, lookahead with BN statistics, reflect crops, 6-view TTA",
          FOLLOWS_SIZE, **_airbench_recipe(11.5, 0.0153, 9.9, 0.23, 0.07, "airbench94"))
def build_airbench94(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
    return _build_airbench(config, input_shape, num_classes, sample_images, steps_per_epoch,
                           (64, 256, 256), 2, bn_momentum=0.6, residual=False, name="airbench94")


# 37 epochs: 1,776 steps on 50,000 rows; the peak at 10%, down to 0.
@register("airbench96", "airbench96 exactly: residual 128/384/512 net, 3 convs a group, BN momentum 0.9, "
          "cutout 12 px inside the image, otherwise airbench94's recipe",
          FOLLOWS_SIZE, **_airbench_recipe(9.0, 0.012, 37.0, 0.1, 0.0, "airbench96"))
def build_airbench96(config, input_shape, num_classes, sample_images=None, steps_per_epoch=None):
    return _build_airbench(config, input_shape, num_classes, sample_images, steps_per_epoch,
                           (128, 384, 512), 3, bn_momentum=0.9, residual=True, name="airbench96")
