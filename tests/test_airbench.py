"""airbench94 / airbench96 against the reference (KellerJordan/cifar10-airbench, legacy/airbench9x.py,
as transcribed in /work/notes/airbench-spec.md): sizes, the residual block, the lr schedule, PyTorch's
SGD, lookahead of weights and BatchNorm statistics, crops, cutout and TTA, each against NumPy."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from comp.engine.augment import make_augment_layer
from comp.config.augment_presets import parse_presets
from comp.config.run_config import build_config
from comp.core.errors import CompError
from comp.nets.models import (
    AIRBENCH_BN_EPSILON,
    _conv_group,
    airbench_whitening_kernel,
    build_model,
    channel_stats,
    forward_macs,
)
from comp.config.tta_policy import TTA_POLICIES, prediction_tag, views_for
from comp.engine.tta import average_views, predict_probs, softmax, view

LOOKAHEAD_BASE = 0.95


def reference_sizes(widths, convs, size=32):
    """The spec's count script: conv+linear weights, BN channels and forward MACs of an airbench net."""
    weights, channels, macs, side, c_in = 288, 0, (size - 1) ** 2 * 24 * 12, size - 1, 24
    for width in widths:
        for i in range(convs):
            fan_in = (c_in if i == 0 else width) * 9
            weights += width * fan_in
            macs += side * side * width * fan_in
            side //= 2 if i == 0 else 1
            channels += width
        c_in = width
    return weights + c_in * 10, channels, macs + c_in * 10


@pytest.mark.parametrize("name, widths, convs, keras_params, trainable, macs", [
    ("airbench94", (64, 256, 256), 2, 1_973_944, 1_971_352, 118_147_360),
    ("airbench96", (128, 384, 512), 3, 9_921_848, 9_915_416, 451_967_264),
])
def test_parameters_and_macs_equal_the_reference(name, widths, convs, keras_params, trainable, macs):
    weights, channels, reference_macs = reference_sizes(widths, convs)
    assert reference_macs == macs
    # Keras counts beta, moving mean and variance per BN channel (the frozen scale is not a weight);
    # PyTorch's trainable count: every conv and linear weight but the whitening kernel, its bias, the betas.
    assert keras_params == weights + 24 + 3 * channels and trainable == weights - 288 + 24 + channels
    plain = build_model(build_config({}, {"model": name, "lookahead": 0.0}), (32, 32, 3), 10)
    normalisation = 2 * 3  # the data's channel mean and variance, variables so that folds share a program
    assert plain.count_params() == keras_params + normalisation
    assert sum(int(np.prod(v.shape)) for v in plain.trainable_weights) == trainable
    assert forward_macs(plain) == macs
    # With lookahead each BN layer keeps an average of its two statistics, a step counter and its last step.
    averaged = build_model(build_config({}, {"model": name}), (32, 32, 3), 10)
    layers = 3 * convs
    assert averaged.count_params() == keras_params + normalisation + 2 * channels + 2 * layers
    assert sum(int(np.prod(v.shape)) for v in averaged.trainable_weights) == trainable


def test_recipes_carry_the_reference_hyperparameters():
    a94, a96 = (build_config({}, {"model": name}) for name in ("airbench94", "airbench96"))
    assert (a94.batch_size, a94.epochs, a94.momentum, a94.bias_lr_scale, a94.label_smoothing) == (1024, 9.9, 0.85, 64, 0.2)
    assert a94.lr == pytest.approx(1.5) and a96.lr == pytest.approx(1.173913, abs=1e-6)  # hyp lr / 7.6667
    assert a94.weight_decay == pytest.approx(0.0153 / 11.5) and a96.weight_decay == pytest.approx(0.012 / 9.0)
    assert (a94.total_steps(48), a96.total_steps(48)) == (476, 1776)  # 50,000 rows
    assert (a94.total_steps(39), a96.total_steps(39)) == (387, 1443)  # 40,000-row folds
    assert a94.fit_epochs == 10 and a94.whiten_bias_epochs == 3 and a94.tta == a96.tta == "airbench"
    assert parse_presets(a96.augment) == {"flip": "alternate", "reflect_crop": 4, "cutout_px": 12}
    assert build_config({}, {"model": "fast", "epochs": 16.0}).epochs == 16  # whole epochs stay ints (run hashes)
    with pytest.raises(CompError, match="sgd-torch"):
        build_config({}, {"model": "fast", "epochs": 9.9})
    with pytest.raises(CompError, match="whiten_bias_epochs"):
        build_config({}, {"model": "fast", "optimizer": "sgd-torch", "whiten_bias_epochs": 3})


# -- the residual block ------------------------------------------------------------------------------


def _np_conv3x3(x, kernel):
    """'same' 3x3 convolution (cross-correlation, as Keras and PyTorch), NHWC, zero padding."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = x.shape[1:3]
    return sum(padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx] for dy in range(3) for dx in range(3))


def _np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _np_batchnorm(x, beta, mean, variance, training):
    if training:
        mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(variance + AIRBENCH_BN_EPSILON) + beta


@pytest.mark.parametrize("training", [False, True])
def test_residual_block_equals_numpy(training):
    """airbench96's ConvGroup: conv1-pool-BN-GELU = x0; conv2-BN-GELU; conv3-BN; + x0; GELU."""
    inputs = keras.Input((6, 6, 4))
    norm = lambda: keras.layers.BatchNormalization(momentum=0.9, epsilon=AIRBENCH_BN_EPSILON, scale=False)
    block = keras.Model(inputs, _conv_group(inputs, 5, 3, norm, residual=True))
    rng = np.random.default_rng(0)
    for variable in block.weights:  # random everything, so identity init or zero betas hide nothing
        value = rng.normal(0, 0.5, variable.shape)
        variable.assign(np.abs(value) + 0.5 if "variance" in variable.name else value)
    x = rng.normal(0, 1, (3, 6, 6, 4))
    got = keras.ops.convert_to_numpy(block(x.astype("float32"), training=training))

    convs = [l for l in block.layers if isinstance(l, keras.layers.Conv2D)]
    norms = [l for l in block.layers if isinstance(l, keras.layers.BatchNormalization)]
    bn = [[keras.ops.convert_to_numpy(v).astype(np.float64) for v in (n.beta, n.moving_mean, n.moving_variance)]
          for n in norms]
    kernels = [keras.ops.convert_to_numpy(c.kernel).astype(np.float64) for c in convs]
    y = _np_conv3x3(x, kernels[0])
    y = y[:, :2 * (y.shape[1] // 2), :2 * (y.shape[2] // 2)].reshape(3, 3, 2, 3, 2, 5).max(axis=(2, 4))  # MaxPool 2
    x0 = _np_gelu(_np_batchnorm(y, *bn[0], training))
    y = _np_gelu(_np_batchnorm(_np_conv3x3(x0, kernels[1]), *bn[1], training))
    y = _np_gelu(_np_batchnorm(_np_conv3x3(y, kernels[2]), *bn[2], training) + x0)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)


def test_whitening_is_airbenchs_uncentred_and_first_rows_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5200, 8, 8, 3), dtype=np.uint8)
    images[:, :, 1:] = images[:, :, :1] // 2 + images[:, :, 1:] // 2  # neighbouring pixels correlate
    mean, variance = channel_stats(images)
    kernel, bias = airbench_whitening_kernel(images, mean, variance)
    assert kernel.shape == (2, 2, 3, 24) and not bias.any()
    x = (images[:5000] / 255.0 - mean) / np.sqrt(variance)
    patches = np.stack([x[:, i:7 + i, j:7 + j] for i in range(2) for j in range(2)], 3).reshape(-1, 12)
    eigenvalues = np.sort(np.linalg.eigvalsh(patches.T @ patches / len(patches)))[::-1]
    white = patches @ kernel[..., :12].reshape(12, 12)
    # The uncentred second moment of the outputs: diagonal, descending, eigenvalue / (eigenvalue + eps).
    np.testing.assert_allclose(white.T @ white / len(white), np.diag(eigenvalues / (eigenvalues + 5e-4)), atol=1e-5)
    np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
    changed = images.copy()
    changed[5000:] = 0  # rows after the first 5,000 are not used; the first row is
    assert np.array_equal(airbench_whitening_kernel(changed, mean, variance)[0], kernel)
    changed[0] = 255 - changed[0]
    assert not np.array_equal(airbench_whitening_kernel(changed, mean, variance)[0], kernel)


# -- schedule, optimizer, lookahead --------------------------------------------------------------------


def airbench_lr(step, total, peak_at, end):
    """legacy/airbench9x.py get_lr, transcribed."""
    warmup = int(total * peak_at)
    if step < warmup:
        return 0.2 + 0.8 * step / warmup
    return 1 - (1 - end) * (step - warmup) / (total - warmup) if end else (total - step) / (total - warmup)


@pytest.mark.parametrize("name, table", [
    ("airbench94", {0: 0.2, 1: 0.207339, 108: 0.992661, 109: 1.0, 110: 0.997466, 238: 0.673106, 475: 0.072534,
                    476: 0.07}),
    ("airbench96", {0: 0.2, 1: 0.204520, 176: 0.995480, 177: 1.0, 178: 0.999375, 888: 0.555347, 1775: 0.000625,
                    1776: 0.0}),
])
def test_learning_rate_schedule_equals_airbenchs(name, table):
    from comp.engine.optimizers import make_schedule

    config = build_config({}, {"model": name})
    schedule = make_schedule(config, steps_per_epoch=48)
    total = config.total_steps(48)
    for step, factor in table.items():  # the spec's table, rounded to 6 places
        assert float(schedule(step)) / config.lr == pytest.approx(factor, abs=1e-6)
    for step in range(0, total + 1, 7):
        assert float(schedule(step)) / config.lr == pytest.approx(
            airbench_lr(step, total, config.lr_peak_at, config.lr_end), abs=1e-6)


def _toy_variables():
    """A conv kernel, a BatchNorm beta and a whitening bias: one variable of each group."""
    rng = np.random.default_rng(3)
    kernel = keras.Variable(rng.normal(size=(3,)).astype("float32"), name="kernel")
    beta = keras.Variable(rng.normal(size=(2,)).astype("float32"), name="beta")
    with keras.name_scope("whiten"):
        whiten_bias = keras.Variable(rng.normal(size=(2,)).astype("float32"), name="bias")
    return [kernel, beta, whiten_bias]


def _run(optimizer, variables, grads):
    optimizer.build(variables)
    seen = []
    for step_grads in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g.astype("float32")) for g in step_grads], variables)
        seen.append([keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables])
    return seen


def torch_sgd(params, grads, lrs, groups, momentum, stop):
    """torch.optim.SGD(nesterov=True) over parameter groups (lr, weight_decay), as airbench builds
    them; a parameter whose requires_grad is off from step `stop[i]` has no grad: no step at all."""
    params = [p.copy() for p in params]
    buffers = [None] * len(params)
    seen = []
    for t, step_grads in enumerate(grads):
        for i, (g, (lr, wd)) in enumerate(zip(step_grads, groups)):
            if t >= stop[i]:
                continue
            d = g + wd * params[i]
            buffers[i] = d if buffers[i] is None else momentum * buffers[i] + d
            params[i] = params[i] - lrs[t] * lr * (d + momentum * buffers[i])
        seen.append([p.copy() for p in params])
    return seen


def test_torch_sgd_equals_pytorchs_update_per_group():
    """Nesterov with the lr outside the buffer, coupled L2, 64x lr (same decay per step) for BN biases,
    the whitening bias frozen after its epochs, and nothing after the last step of 2.5 epochs."""
    from comp.engine.optimizers import make_optimizer

    config = build_config({}, {"model": "airbench94", "lr": 0.5, "weight_decay": 0.02, "epochs": 2.5,
                               "whiten_bias_epochs": 1, "lookahead": 0.0, "lr_peak_at": 0.4})
    steps_per_epoch, steps = 2, 8  # 5 counted steps (ceil 2.5 * 2), then 3 that must change nothing
    variables = _toy_variables()
    start = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
    grads = [[np.random.default_rng(t).normal(size=v.shape) for v in variables] for t in range(steps)]
    got = _run(make_optimizer(config, steps_per_epoch), variables, grads)

    total = config.total_steps(steps_per_epoch)
    lrs = [airbench_lr(min(t, total), total, config.lr_peak_at, config.lr_end) for t in range(steps)]
    # airbench's two groups in Keras's mean-loss units: (lr, L2) and, for BN biases, (64 lr, L2 / 64).
    groups = [(0.5, 0.02), (0.5 * 64, 0.02 / 64), (0.5, 0.02)]
    expected = torch_sgd(start, grads, lrs, groups, 0.85, stop=[total, total, steps_per_epoch])
    for t in range(steps):
        for a, b in zip(got[t], expected[t]):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert np.array_equal(got[-1][2], got[steps_per_epoch - 1][2])  # the whitening bias stopped
    assert all(np.array_equal(a, b) for a, b in zip(got[-1], got[total - 1]))  # nothing after the last step


def test_keras_sgd_would_differ_while_the_lr_changes():
    """Why TorchSGD exists: Keras's SGD puts the lr into the buffer, so under a moving schedule its
    steps are not PyTorch's (the comparison above would fail with it)."""
    from comp.engine.optimizers import make_optimizer

    common = {"model": "airbench94", "lr": 0.5, "weight_decay": 0.0, "bias_lr_scale": 1, "epochs": 4,
              "lookahead": 0.0, "whiten_bias_epochs": 0}
    grads = [[np.random.default_rng(t).normal(size=(3,))] for t in range(4)]
    torch_like = _run(make_optimizer(build_config({}, common), 1), [keras.Variable(np.zeros(3, "float32"))], grads)
    keras_sgd = _run(make_optimizer(build_config({}, {**common, "optimizer": "sgd"}), 1),
                     [keras.Variable(np.zeros(3, "float32"))], grads)
    assert np.allclose(torch_like[0][0], keras_sgd[0][0])  # the first step agrees
    assert not np.allclose(torch_like[-1][0], keras_sgd[-1][0], atol=1e-4)


def airbench_lookahead(values, total, every=5):
    """The reference loop on a sequence of raw post-step values (per step k = 1..total): sync every
    `every` steps, the average starting as the values at the first sync; at the end net <- average."""
    average, current, seen = None, None, []
    for k, raw in enumerate(values, start=1):
        current = raw(current) if callable(raw) else raw
        if k % every == 0 and k <= total:
            keep = 0.0 if average is None else LOOKAHEAD_BASE**every * (k / total) ** 3
            average = current if average is None else keep * average + (1 - keep) * current
            current = average
        seen.append(current)
    return seen, average


def test_lookahead_with_torch_sgd_ends_on_the_average_of_the_last_sync():
    from comp.engine.optimizers import make_optimizer

    config = build_config({}, {"model": "airbench94", "lr": 0.1, "weight_decay": 0.0, "bias_lr_scale": 1,
                               "schedule": "constant", "momentum": 0.0, "epochs": 3.25, "whiten_bias_epochs": 0})
    steps_per_epoch = 4  # 13 steps: the last sync at 10, then three raw steps, then 3 that do nothing
    total = config.total_steps(steps_per_epoch)
    assert total == 13
    variable = keras.Variable(np.zeros(1, "float32"))
    optimizer = make_optimizer(config, steps_per_epoch)
    grads = [[np.array([float(t % 3) - 0.5])] for t in range(16)]
    got = _run(optimizer, [variable], grads)
    # Plain SGD (momentum 0, constant lr) between syncs: each step adds -lr * g.
    expected, average = airbench_lookahead(
        [(lambda g: (lambda cur: (0.0 if cur is None else cur) - 0.1 * g))(g[0][0]) for g in grads[:total]], total)
    np.testing.assert_allclose([v[0][0] for v in got[:total]], expected, rtol=1e-5, atol=1e-6)
    assert all(v[0][0] == got[total - 1][0][0] for v in got[total:])
    optimizer.finalize_variable_values([variable])  # what fit does at its end
    assert float(keras.ops.convert_to_numpy(variable)[0]) == pytest.approx(average, abs=1e-6)


def test_batchnorm_statistics_follow_the_lookahead():
    from comp.nets.layers import AirbenchBatchNorm

    total, momentum = 7, 0.6
    layer = AirbenchBatchNorm(lookahead=LOOKAHEAD_BASE, total_steps=total, momentum=momentum, scale=False,
                              epsilon=AIRBENCH_BN_EPSILON)
    rng = np.random.default_rng(5)
    batches = [rng.normal(k, 1 + k, (8, 2, 2, 3)).astype("float32") for k in range(total + 3)]
    got = []
    for batch in batches:
        layer(batch, training=True)
        got.append(keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64))
    layer(batches[0], training=False)  # inference changes nothing

    def step(batch):
        return lambda current: momentum * (np.zeros(3) if current is None else current) + \
            (1 - momentum) * batch.mean(axis=(0, 1, 2))

    expected, average = airbench_lookahead([step(b) for b in batches[:total]], total)
    expected[-1] = average  # at step T the statistics become the average (airbench's final copy)
    np.testing.assert_allclose(got[:total], expected, rtol=1e-5, atol=1e-5)
    for later in got[total:]:  # steps past T change nothing
        np.testing.assert_array_equal(later, got[total - 1])
    assert int(keras.ops.convert_to_numpy(layer.steps)) == total + 3


# -- augmentation -----------------------------------------------------------------------------------


def test_reflect_crop_equals_numpy_reflect_pad_and_slice():
    images = np.random.default_rng(1).uniform(0, 255, (64, 10, 10, 3)).astype("float32")
    layer = make_augment_layer("reflect-crop=2", seed=4)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    offsets = set()
    for original, cropped in zip(images, out):
        padded = np.pad(original, ((2, 2), (2, 2), (0, 0)), mode="reflect")  # PyTorch's reflect: no edge repeat
        found = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(padded[dy:dy + 10, dx:dx + 10], cropped)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 12  # offsets drawn over the whole 5x5 grid, not a few


def test_cutout_inside_is_a_whole_square_of_the_mean_colour():
    images = np.random.default_rng(2).uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    layer = make_augment_layer("cutout-inside=6", seed=1)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    mean = images.mean(axis=(0, 1, 2))
    corners = set()
    for original, cut in zip(images, out):
        changed = np.argwhere((cut != original).any(-1))
        assert len(changed) == 36  # never clipped by the border: always the full 6x6 square
        top, left = changed.min(0)
        assert (changed.max(0) - changed.min(0)).tolist() == [5, 5]
        np.testing.assert_allclose(cut[top:top + 6, left:left + 6], np.broadcast_to(mean, (6, 6, 3)), rtol=1e-5)
        corners.add((top, left))
    assert len(corners) > 30 and max(max(c) for c in corners) <= 10  # corners spread over 0..10 (16 - 6)


def test_airbench_presets_compose_and_sizes_are_checked():
    assert parse_presets("airbench94") == {"flip": "alternate", "reflect_crop": 2}
    assert parse_presets("alt-flip,reflect-crop=3,cutout-inside=8") == {"flip": "alternate", "reflect_crop": 3,
                                                                         "cutout_px": 8}
    for bad in ("reflect-crop=0", "reflect-crop=9", "cutout-inside=x"):
        with pytest.raises(CompError, match="=N takes"):
            parse_presets(bad)


# -- TTA --------------------------------------------------------------------------------------------


def test_airbench_tta_views_are_the_references():
    x = np.random.default_rng(3).integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)
    flip = lambda a: a[:, :, ::-1]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")  # F.pad(inputs, (1,)*4, 'reflect')
    t1, t2 = padded[:, 0:6, 0:7], padded[:, 2:8, 2:9]
    reference = [x, flip(x), t1, flip(t1), t2, flip(t2)]
    got = [view(x, *v, fill="reflect") for v in views_for("airbench")]
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(a, b)
    assert TTA_POLICIES["airbench"][0] == (False, 0, 0)
    assert prediction_tag("airbench") == prediction_tag("airbench", "logits") == ".airbench"


def test_airbench_tta_is_the_weighted_mean_of_logits():
    """infer_mirror_translate: 0.5 * mirror(x) + 0.5 * mean(mirror(t1), mirror(t2)), on logits."""
    inputs = keras.Input((6, 7, 3))
    net = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    x = np.random.default_rng(4).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)

    def logits(images):
        return keras.ops.convert_to_numpy(net(images.astype("float32")))

    flip = lambda a: a[:, :, ::-1]
    mirror = lambda a: 0.5 * logits(a) + 0.5 * logits(flip(a))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    reference = 0.5 * mirror(x) + 0.5 * (mirror(padded[:, 0:6, 0:7]) + mirror(padded[:, 2:8, 2:9])) / 2
    for average in ("probs", "logits"):  # the policy fixes its own average
        np.testing.assert_allclose(predict_probs(net, x, "airbench", average=average), softmax(reference), atol=1e-5)
    stack = np.random.default_rng(0).normal(size=(6, 3, 4))
    np.testing.assert_allclose(average_views(stack, policy="airbench"),
                               softmax(np.tensordot([2, 2, 1, 1, 1, 1], stack, axes=1) / 8))


# -- a fold ------------------------------------------------------------------------------------------


def test_a_fold_ends_on_averaged_weights_and_statistics(tmp_path):
    from comp.engine import feed, optimizers, programs, trainer
    from comp.nets.layers import AirbenchBatchNorm

    config = build_config({}, {"model": "airbench96", "width": 0.0625, "batch_size": 16, "epochs": 2.5})
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 96)
    data, steps = feed.training_inputs(images, labels, config.batch_size, 0)
    model, net = programs.build_training_model(config, images.shape[1:], 3, images, 0, steps)
    optimizers.compile_training_model(model, config, steps)
    model.fit(**data, epochs=config.fit_epochs, verbose=0)
    values = lambda variables: [keras.ops.convert_to_numpy(v) for v in variables]
    for weight, average in zip(values(model.trainable_variables), values(model.optimizer.lookahead_averages)):
        np.testing.assert_array_equal(weight, average)
    norms = [layer for layer in net.layers if isinstance(layer, AirbenchBatchNorm)]
    assert len(norms) == 9
    for norm in norms:
        assert int(keras.ops.convert_to_numpy(norm.steps)) == 3 * steps  # counted on past the last step...
        np.testing.assert_array_equal(*values([norm.moving_mean, norm.average_mean]))  # ...which ended on the average

    result = trainer.train_fold(config, images[:80], labels[:80], images[80:], labels[80:], 3, 0, fold_dir=tmp_path,
                                test_x=images[:8])
    assert np.isfinite(result.val_loss)
    assert (tmp_path / "val_probs.airbench.npy").exists() and (tmp_path / "test_probs.airbench.npy").exists()
    from comp.nets.saving import load_keras_model  # a saved net with AirbenchBatchNorm loads in a fresh session

    keras.backend.clear_session()
    assert load_keras_model(tmp_path / "model.keras", fix="retrain it").count_params() > 0


def test_a_bigger_fold_reusing_the_compiled_programs_averages_its_statistics_to_its_own_end():
    """A full-data fit after a fold (twice its rows) reuses the fold's compiled programs; its BatchNorm
    statistics must follow its own steps to their end, not freeze where the fold's ended (they did:
    test accuracy 0.26 against 0.55 trained alone, bench/RESULTS.md)."""
    from comp.engine import programs, trainer
    from comp.nets.layers import AirbenchBatchNorm

    config = build_config({}, {"model": "airbench94", "width": 0.0625, "batch_size": 16, "epochs": 2})
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (160, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 160)
    programs._engine = None
    trainer.train_fold(config, images[:48], labels[:48], images[128:], labels[128:], 3, 0)  # 3 steps an epoch
    engine = programs._engine
    reused = trainer.train_fold(config, images[:128], labels[:128], images[128:], labels[128:], 3, 1)  # 8
    assert programs._engine is engine  # the same compiled programs
    norms = [layer for layer in programs._engine.net.layers if isinstance(layer, AirbenchBatchNorm)]
    value = lambda v: keras.ops.convert_to_numpy(v)
    assert len(norms) == 6
    for norm in norms:  # the averaging window is this fit's 16 steps (it was the first fold's 6)...
        assert int(value(norm.last_step)) == 16 and int(value(norm.steps)) == 16
        np.testing.assert_array_equal(value(norm.moving_mean), value(norm.average_mean))  # ...ended on the average
    programs._engine = None
    fresh = trainer.train_fold(config, images[:128], labels[:128], images[128:], labels[128:], 3, 1)
    assert programs._engine is not engine
    # Equal up to the schedule's rounding at so few steps (0.14 here); frozen statistics gave 0.37.
    assert np.abs(reused.val_probs - fresh.val_probs).max() < 0.25


def test_bfloat16_trains_on_upscaled_digits_without_diverging():
    """The demo set (8x8 digits upscaled, grey): its 2x2 patches have near-zero variances, so the
    whitening filters are large; a bfloat16 whitening conv made the loss NaN in the first epoch.
    The whitening conv computes in float32 under every policy."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from comp.engine import trainer

    digits = load_digits()
    images = np.stack([np.asarray(Image.fromarray((im * 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
                                  .convert("RGB")) for im in digits.images[:256]])
    labels = digits.target[:256]
    config = build_config({}, {"model": "airbench94", "width": 0.25, "batch_size": 64, "epochs": 2,
                               "precision": "bfloat16", "val_every": 0})
    result = trainer.train_fold(config, images[:192], labels[:192], images[192:], labels[192:], 10, 0)
    assert np.isfinite(result.val_loss) and result.val_accuracy > 0.1
