"""Model zoo shapes, augmentation values and mixing targets (TensorFlow backend, in process)."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from comp.engine.augment import make_augment_layer, make_mix_layer
from comp.config.augment_presets import parse_presets
from comp.config.run_config import build_config
from comp.core.errors import CompError
from comp.nets.models import (
    MAX_MACS_RATIO,
    MODELS,
    build_model,
    channel_stats,
    forward_macs,
    input_halvings,
    whitening_kernel,
)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_maps_pixels_to_logits(name):
    config = build_config({}, {"model": name, "width": 0.25})
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    net = build_model(config, images.shape[1:], 7, images)
    logits = keras.ops.convert_to_numpy(net(images.astype("float32"), training=False))
    assert logits.shape == (4, 7) and logits.dtype == np.float32 and np.isfinite(logits).all()


def test_vgg_depth_and_head_follow_the_config():
    config = build_config({}, {"model": "deep", "width": 0.25})
    net = build_model(config, (32, 32, 3), 10)
    convs = [l for l in net.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l.units for l in net.layers if isinstance(l, keras.layers.Dense)]
    assert len(convs) == 3 + 3 + 4 + 4
    assert dense == [256, 64, 10]


def test_whitening_kernel_whitens_patches():
    rng = np.random.default_rng(0)
    # Correlated pixels: a smooth random field, like photos.
    base = rng.normal(size=(400, 9, 9, 1)).repeat(2, 1).repeat(2, 2)[:, :16, :16]
    images = np.clip(128 + 40 * np.concatenate([base, base * 0.5, base * 0.2], -1), 0, 255).astype(np.uint8)
    mean, variance = channel_stats(images)
    kernel, _ = whitening_kernel(images, mean, variance)
    x = (images / 255.0 - mean) / np.sqrt(variance)
    patches = np.stack([x[:, i:15 + i, j:15 + j] for i in range(2) for j in range(2)], 3).reshape(-1, 12)
    half = kernel[..., :12].reshape(12, 12)  # (dy,dx,c) x filters
    white = patches @ half
    cov = np.cov(white, rowvar=False)
    # Decorrelated, and unit variance except where WHITEN_EPS damps near-empty directions.
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-3
    assert np.diag(cov).max() == pytest.approx(1.0, abs=0.01) and np.diag(cov).max() <= 1.0 + 1e-6


def _batch():
    rng = np.random.default_rng(1)
    return rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")


def _mirrored(original, augmented) -> bool:
    """True if augmented is the mirror image, False if it is the original; fails otherwise."""
    if np.allclose(augmented, original, atol=1e-3):
        return False
    assert np.allclose(augmented, original[:, ::-1], atol=1e-3)
    return True


def test_flip_is_exact():
    layer = make_augment_layer("flip", seed=3)
    images = np.concatenate([_batch()] * 4)  # 32 images: a fair coin leaves both outcomes
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    mirrored = [_mirrored(original, augmented) for original, augmented in zip(images, out)]
    assert 0 < sum(mirrored) < len(mirrored)  # some flipped, some not, each exactly


def test_alternating_flip_shows_each_image_both_ways_in_consecutive_epochs():
    images = np.random.default_rng(2).integers(0, 256, (64, 16, 16, 3)).astype("float32")
    layer = make_augment_layer("alt-flip", seed=0, steps_per_epoch=2)
    # Four calls = two epochs of two steps: the same batch in both steps of an epoch.
    orientations = []
    for _ in range(4):
        out = keras.ops.convert_to_numpy(layer(images, training=True))
        orientations.append([_mirrored(a, b) for a, b in zip(images, out)])
    first, same_epoch, second, _ = (np.array(o) for o in orientations)
    assert np.array_equal(first, same_epoch)  # an image keeps its side within an epoch
    assert np.array_equal(second, ~first)  # ... and shows the other side the next epoch
    assert 16 < first.sum() < 48  # about half mirrored in the first epoch, not all or none
    assert int(keras.ops.convert_to_numpy(layer.steps_seen)) == 4
    layer(images, training=False)  # inference neither flips nor counts
    assert int(keras.ops.convert_to_numpy(layer.steps_seen)) == 4


@pytest.mark.parametrize("preset, pad_mode", [("flip-crop", "constant"), ("flip-crop,reflect", "symmetric")])
def test_crop_shifts_by_whole_pixels_with_zero_or_mirrored_fill(preset, pad_mode):
    layer = make_augment_layer(preset, seed=5)
    images = _batch()
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    assert out.shape == images.shape
    for original, augmented in zip(images, out):
        matched = False
        for flipped in (original, original[:, ::-1]):
            padded = np.pad(flipped, ((4, 4), (4, 4), (0, 0)), mode=pad_mode)  # Keras's reflect = numpy's symmetric
            for dy in range(9):
                for dx in range(9):
                    if np.allclose(padded[dy:dy + 16, dx:dx + 16], augmented, atol=1e-2):
                        matched = True
        assert matched


def test_inference_is_untouched_and_presets_compose():
    images = _batch()
    layer = make_augment_layer("simple,cutout", seed=0)
    assert np.array_equal(keras.ops.convert_to_numpy(layer(images, training=False)), images)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    assert out.shape == images.shape and not np.allclose(out, images)
    assert (out == 0).reshape(8, -1).all(-1).sum() == 0 and ((out == 0).mean() > 0.1)  # cutout zeroed a square
    assert parse_presets("simple,cutout")["cutout"] == 0.5
    with pytest.raises(CompError, match="unknown"):
        parse_presets("flip,spin")
    assert parse_presets("alt-flip,crop=2") == {"flip": "alternate", "crop_pad": 2}
    assert parse_presets("flip-crop,crop=3")["crop_pad"] == 3  # later parts win
    for bad in ("crop=0", "crop=two", "crop=99"):
        with pytest.raises(CompError, match="crop=N"):
            parse_presets(bad)


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixing_keeps_targets_on_the_simplex(mixup, cutmix):
    images = _batch()
    targets = np.eye(4, dtype="float32")[np.arange(8) % 4]
    mix = make_mix_layer(mixup, cutmix, seed=2)
    mixed, soft = mix(images, targets, training=True)
    mixed, soft = keras.ops.convert_to_numpy(mixed), keras.ops.convert_to_numpy(soft)
    assert np.allclose(soft.sum(1), 1.0, atol=1e-5) and (soft >= 0).all()
    partner_images, partner_labels = images[::-1], (np.arange(8) % 4)[::-1]
    for i in range(8):
        # How much of image i is its partner's, read off the pixels: mixup blends every pixel with one
        # lambda; cutmix pastes the partner's pixels inside a box.
        differs = np.abs(images[i] - partner_images[i]) > 1.0
        own = (mixed[i] - partner_images[i])[differs] / (images[i] - partner_images[i])[differs]
        pasted = np.isclose(mixed[i], partner_images[i], atol=1e-3).all(axis=-1)
        if np.allclose(own, own.mean(), atol=1e-3) and not np.isclose(own.mean(), 1.0):
            share = 1.0 - own.mean()  # mixup
        else:
            share = pasted.mean()  # cutmix (or untouched: 0)
        # The partner's label weighs exactly its share of the pixels; the image's own label the rest.
        assert soft[i, partner_labels[i]] == pytest.approx(share, abs=1e-3)
        assert soft[i, i % 4] == pytest.approx(1.0 - share, abs=1e-3)
    same, unmixed = mix(images, targets, training=False)
    assert np.array_equal(keras.ops.convert_to_numpy(same), images)


def test_augment_preview_writes_a_grid(tmp_path):
    from comp.cli import main

    from .conftest import make_competition

    data = make_competition(tmp_path / "d", per_class=6)
    out = tmp_path / "preview.png"
    assert main(["data", "augment-preview", "--data", str(data), "--workdir", str(tmp_path / "w"),
                 "--augment", "simple,cutout", "--mixup", "0.2", "--out", str(out), "--quiet"]) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_fast_convs_start_as_identity_on_their_first_channels():
    config = build_config({}, {"model": "fast", "width": 0.25})
    net = build_model(config, (16, 16, 3), 10)
    convs = [l for l in net.layers if isinstance(l, keras.layers.Conv2D) and l.name != "whiten"]
    assert len(convs) == 6
    for conv in convs:
        kernel = conv.get_weights()[0]
        n = min(kernel.shape[2], kernel.shape[3])
        identity = np.zeros(kernel.shape[:3] + (n,), np.float32)
        identity[1, 1, np.arange(n), np.arange(n)] = 1.0
        assert np.array_equal(kernel[..., :n], identity)
        rest = kernel[..., n:]
        # The other filters keep PyTorch's default init, U(+-1/sqrt(fan_in)).
        assert rest.size == 0 or 0 < np.abs(rest).max() <= 1 / np.sqrt(9 * kernel.shape[2])


# -- sizes: the nets that follow the resolution, the classic ones that take any size ------------

FOLLOW_THE_SIZE = ["resnet", "fast", "fast-large", "airbench94", "airbench96"]
CLASSIC = ["baseline", "vgg", "deep"]


def _forward(name, shape, width=0.25, classes=5):
    config = build_config({}, {"model": name, "width": width})
    images = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
    net = build_model(config, images.shape[1:], classes, images)
    return net, keras.ops.convert_to_numpy(net(images.astype("float32"), training=False))


@pytest.mark.parametrize("name", FOLLOW_THE_SIZE)
@pytest.mark.parametrize("size", [16, 32, 64, 128, 224])
def test_resolution_following_nets_map_any_size_to_logits(name, size):
    net, logits = _forward(name, (size, size, 3))
    assert logits.shape == (2, 5) and np.isfinite(logits).all()
    # The head pools globally: the classifier's inputs do not grow with the image.
    assert net.get_layer("logits").kernel.shape[0] == _forward(name, (32, 32, 3))[0].get_layer("logits").kernel.shape[0]


@pytest.mark.parametrize("name", CLASSIC)
@pytest.mark.parametrize("size", [16, 64, 128])
def test_classic_nets_keep_working_at_any_size(name, size):
    _, logits = _forward(name, (size, size, 3))
    assert logits.shape == (2, 5) and np.isfinite(logits).all()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(16, 8, 3), (8, 16, 1), (20, 8, 3)])
def test_every_model_takes_images_with_a_narrow_side(name, shape):
    """A side that reaches 1 px before the last pooling stops pooling on both sides (a tall 16x8
    image once pooled its 1-px width to nothing: the whitened nets and vgg raised at build)."""
    _, logits = _forward(name, shape)
    assert logits.shape == (2, 5) and np.isfinite(logits).all()


# Parameters and forward MACs at width 1, 10 classes, 32x32x3, computed on commit 4dfbc3f (before the
# nets followed the resolution): at 32 px the nets must stay exactly what they were.
AT_32_PX_BEFORE = {
    "resnet": (175994, 26657408, 51),
    "fast": (1973950, 118147360, 29),
    "fast-large": (7412670, 411710496, 38),
}


@pytest.mark.parametrize("name", list(AT_32_PX_BEFORE))
def test_nets_at_32_px_are_unchanged(name):
    config = build_config({}, {"model": name})
    net = build_model(config, (32, 32, 3), 10)
    assert (net.count_params(), forward_macs(net), len(net.layers)) == AT_32_PX_BEFORE[name]


def test_the_stem_halves_until_the_body_sees_at_most_64x64():
    assert [input_halvings((s, s)) for s in (16, 32, 64, 65, 96, 128, 129, 224, 256, 512)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert input_halvings((64, 128)) == 1 and input_halvings((32, 128)) == 0  # by area, any aspect


@pytest.mark.parametrize("name", FOLLOW_THE_SIZE)
def test_compute_stays_bounded_as_the_images_grow(name):
    config = build_config({}, {"model": name, "width": 0.25})

    def macs(height, width):
        return forward_macs(build_model(config, (height, width, 3), 10))

    at_32 = macs(32, 32)
    # 64 px runs at full resolution: it buys compute (the upscaling trick), about 4x, never more than the bound.
    assert 3.5 * at_32 <= macs(64, 64) <= MAX_MACS_RATIO * at_32
    for height, width in [(96, 96), (128, 128), (160, 160), (224, 224), (256, 256), (96, 224), (224, 64), (400, 128)]:
        assert macs(height, width) <= MAX_MACS_RATIO * at_32, (height, width)


def test_list_models_says_which_sizes_each_model_suits(capsys):
    from comp.cli import main

    assert main(["train", "--list-models"]) == 0
    out = capsys.readouterr().out
    for name, spec in MODELS.items():
        assert name in out
    assert out.count("sizes: any, best 32-256 px") == len(FOLLOW_THE_SIZE)
    assert out.count("sizes: any; compute") == len(CLASSIC)


def test_resnet_subsamples_before_a_strided_projection_above_32_px_and_it_is_the_same_conv():
    def projections(size):
        net = build_model(build_config({}, {"model": "resnet", "width": 0.25}), (size, size, 3), 5)
        return [(l.strides, l.input.shape[1]) for l in net.layers if isinstance(l, keras.layers.Conv2D)
                and l.kernel.shape[:2] == (1, 1)]

    assert projections(32) == [((2, 2), 32), ((2, 2), 16)]  # as it always was
    assert projections(64) == [((1, 1), 32), ((2, 2), 32)]  # 64x64 -> subsampled, then a 1x1 conv
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    strided = keras.layers.Conv2D(8, 1, strides=2, use_bias=False)
    expected = keras.ops.convert_to_numpy(strided(x))
    plain = keras.layers.Conv2D(8, 1, use_bias=False)
    plain.build(x.shape)
    plain.set_weights(strided.get_weights())
    got = keras.ops.convert_to_numpy(plain(keras.layers.MaxPooling2D(1, strides=2)(x)))
    assert np.allclose(got, expected, atol=1e-6)


TRAIN_ONE_STEP = """
import numpy as np, keras
from comp.config.run_config import build_config
from comp.nets.models import build_model
net = build_model(build_config({}, {"model": "resnet", "width": 0.25}), (64, 64, 3), 3)
net.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
images = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3)).astype("float32")
net.fit(images, np.arange(32) % 3, batch_size=16, epochs=1, verbose=0)
print("trained")
"""


def test_narrow_resnet_trains_at_64_px_on_tensorflow_cpu():
    # In a child: the oneDNN bug this guards against kills the process (segfault, glibc abort).
    import subprocess
    import sys

    from .conftest import REPO

    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", TRAIN_ONE_STEP], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-2000:]


def test_whitening_is_fitted_on_as_many_pixels_at_any_size(monkeypatch):
    from comp.nets import models
    from comp.nets.models import WHITEN_SAMPLES, airbench_whitening_kernel, whitening_rows

    def rows(count, side):
        return whitening_rows(np.broadcast_to(np.uint8(0), (count, side, side, 3)))

    # 32 px and less: the 5,000 images as always; larger: fewer images, as many pixels (about 0.5 GB of patches).
    assert rows(50_000, 32) == rows(50_000, 16) == WHITEN_SAMPLES and rows(100, 32) == WHITEN_SAMPLES
    assert rows(50_000, 64) == WHITEN_SAMPLES // 4 and rows(50_000, 224) == 102 and rows(50_000, 4000) == 1
    monkeypatch.setattr(models, "WHITEN_SAMPLES", 8)  # at 64 px: the first 8 * 32 * 32 / 64 / 64 = 2 rows
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    mean, variance = channel_stats(images)
    kernel = airbench_whitening_kernel(images, mean, variance)[0]
    changed = images.copy()
    changed[2:] = 0
    assert np.array_equal(airbench_whitening_kernel(changed, mean, variance)[0], kernel)
    changed[1] = 255 - changed[1]
    assert not np.array_equal(airbench_whitening_kernel(changed, mean, variance)[0], kernel)
