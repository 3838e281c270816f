"""Model zoo shapes, augmentation values and mixing targets (TensorFlow backend, in process)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from comp.augment import make_augment_layer, make_mix_layer, parse_presets
from comp.config import build_config
from comp.errors import CompError
from comp.models import MODELS, build_model, whitening_kernel, channel_stats


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
