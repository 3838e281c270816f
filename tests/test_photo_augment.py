"""Augmentations for real photos (random-resized-crop, TrivialAugment, colour jitter) and the
labelled augment preview (TensorFlow backend, in process; the JAX jit check is tests/test_jax_jit.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from comp.config.augment_presets import PRESETS, TRIVIAL_OPS, parse_presets
from comp.engine.augment import (
    adjust_colour,
    autocontrast,
    compose,
    make_augment_layer,
    posterize,
    resized_crop,
    solarize,
    trivial_augment,
    warp,
)
from comp.stages.preview import mix_label

PHOTO_PRESETS = ("rrc", "trivial", "jitter", "photo")


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _photos(batch=8, size=16, seed=0):
    """Smooth random colour fields: what a resized crop or a hue turn visibly changes."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (batch, size // 4, size // 4, 3))
    return np.clip(coarse.repeat(4, 1).repeat(4, 2) + rng.normal(0, 8, (batch, size, size, 3)), 0, 255).astype("float32")


def _full(batch, value):
    return np.full((batch,), value, "float32")


@pytest.mark.parametrize("preset", PHOTO_PRESETS)
def test_photo_presets_keep_shape_dtype_and_range_and_differ_per_image(preset):
    # The same image eight times: whatever differs across the batch is the per-image randomness.
    images = np.repeat(_photos(1, 32), 8, axis=0)
    layer = make_augment_layer(preset, seed=3)
    out = _numpy(layer(images, training=True))
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0 + 1e-3
    distinct = {np.round(o, 1).tobytes() for o in out}
    assert len(distinct) >= 6, preset  # trivial may draw "identity" for a few of them
    assert np.array_equal(_numpy(layer(images, training=False)), images)
    again = _numpy(layer(images, training=True))
    assert not np.allclose(again, out)  # a new draw every step


def test_presets_parse_and_photo_combines_rrc_flip_trivial():
    for preset in PHOTO_PRESETS:
        assert preset in PRESETS
    photo = parse_presets("photo")
    assert photo["rrc_scale"] == parse_presets("rrc")["rrc_scale"] and photo["flip"] is True and photo["trivial"]
    assert parse_presets("jitter")["jitter"] == (0.4, 0.4, 0.4, 0.1)


def test_rrc_with_the_whole_area_and_square_aspect_is_the_identity():
    images = _photos()
    layer = make_augment_layer({"rrc_scale": (1.0, 1.0), "rrc_ratio": (1.0, 1.0)}, seed=0)
    assert np.allclose(_numpy(layer(images, training=True)), images, atol=1e-3)


def test_resized_crop_fills_the_image_with_the_box():
    images = np.zeros((2, 16, 16, 3), "float32")
    images[:, :8, :8] = 200.0  # the top-left quadrant
    images[1, 8:, 8:] = 100.0  # and, in the second image, the bottom-right one
    out = _numpy(resized_crop(images, _full(2, 0), _full(2, 0), _full(2, 8), _full(2, 8)))
    assert np.allclose(out, 200.0, atol=1e-3)  # the quadrant blown up, corners on corners: nothing else
    out = _numpy(resized_crop(images, np.array([0, 8], "float32"), np.array([0, 8], "float32"),
                              _full(2, 8), _full(2, 8)))
    assert np.allclose(out[1], 100.0, atol=1e-3)  # a per-image box
    half = _numpy(resized_crop(images, _full(2, 0), _full(2, 0), _full(2, 16), _full(2, 8.5)))
    # Columns 0..7.5 stretched over 16: output column x samples x / 2, the last one half in the black.
    assert np.allclose(half[0, :8, :15], 200.0, atol=1e-3) and np.allclose(half[0, :8, 15], 100.0, atol=1e-3)
    assert np.allclose(half[0, 8:], 0.0, atol=1e-3)


def test_composed_geometry_is_the_two_warps_in_one():
    images = _photos(2)
    ones, zeros = _full(2, 1.0), _full(2, 0.0)
    shift = (ones, zeros, zeros, ones, _full(2, 2.0), _full(2, -3.0))  # whole pixels
    quarter_turn = (zeros, -ones, ones, zeros, zeros, zeros)  # about the centre: pixel centres onto pixel centres
    one_pass = _numpy(warp(images, compose(shift, quarter_turn)))
    two_passes = _numpy(warp(warp(images, shift), quarter_turn))
    assert np.allclose(one_pass, two_passes, atol=1e-3) and not np.allclose(one_pass, images, atol=1.0)


def test_random_resized_crop_zooms_in_by_the_drawn_area():
    # A one-pixel checkerboard: a box of a quarter of the area doubles the squares, which blurs them
    # under bilinear sampling; the whole area keeps them.
    images = np.tile(((np.indices((16, 16)).sum(0) % 2) * 255.0)[None, :, :, None], (4, 1, 1, 3)).astype("float32")
    layer = make_augment_layer({"rrc_scale": (0.25, 0.25), "rrc_ratio": (1.0, 1.0)}, seed=0)
    out = _numpy(layer(images, training=True))
    assert np.abs(out - 127.5).mean() < 0.75 * np.abs(images - 127.5).mean()


def test_solarize_inverts_at_and_above_the_threshold_only():
    images = np.arange(256, dtype="float32").reshape(1, 16, 16, 1)
    out = _numpy(solarize(images, _full(1, 128)))
    values = images.ravel()
    assert np.array_equal(out.ravel(), np.where(values >= 128, 255 - values, values))


def test_posterize_keeps_the_top_bits():
    images = np.arange(256, dtype="float32").reshape(1, 16, 16, 1)
    out = _numpy(posterize(images, _full(1, 3)))
    assert np.array_equal(out.ravel(), (np.arange(256) & 0b11100000).astype("float32"))
    assert np.array_equal(_numpy(posterize(images, _full(1, 8))), images)


def test_autocontrast_stretches_each_channel_and_keeps_flat_ones():
    images = np.zeros((1, 4, 4, 2), "float32")
    images[..., 0] = np.linspace(50, 100, 16).reshape(4, 4)
    images[..., 1] = 70.0
    out = _numpy(autocontrast(images))
    assert out[..., 0].min() == pytest.approx(0) and out[..., 0].max() == pytest.approx(255)
    assert np.allclose(out[..., 1], 70.0)


def test_jitter_with_zero_strength_is_the_identity_and_each_factor_does_its_job():
    images = _photos(4)
    ones = _full(4, 1.0)
    assert np.allclose(_numpy(adjust_colour(images, ones, ones, ones, _full(4, 0.0))), images, atol=1e-2)
    layer = make_augment_layer({"jitter": (0.0, 0.0, 0.0, 0.0)}, seed=0)
    assert np.allclose(_numpy(layer(images, training=True)), images, atol=1e-3)
    gray = _numpy(adjust_colour(images, ones, ones, _full(4, 0.0)))
    assert np.allclose(gray[..., 0], gray[..., 1], atol=1e-3) and np.allclose(gray[..., 1], gray[..., 2], atol=1e-3)
    flat = _numpy(adjust_colour(images, ones, _full(4, 0.0), ones))
    assert np.allclose(flat.std(axis=(1, 2)).max(axis=-1), flat.std(axis=(1, 2)).min(axis=-1), atol=1e-2)
    darker = _numpy(adjust_colour(images, _full(4, 0.5), ones, ones))
    assert np.allclose(darker, images * 0.5, atol=1e-3)
    # Hue: a full turn is the identity; half a turn gives each colour its complement about its
    # luma (I and Q negated: 2 * luma - rgb), the luma unchanged.
    pink = np.array([160.0, 100.0, 100.0], "float32") * np.ones((1, 2, 2, 3), "float32")
    assert np.allclose(_numpy(adjust_colour(pink, _full(1, 1), _full(1, 1), _full(1, 1), _full(1, 1.0))), pink, atol=1e-2)
    luma = 0.299 * 160 + 0.587 * 100 + 0.114 * 100
    half = _numpy(adjust_colour(pink, _full(1, 1), _full(1, 1), _full(1, 1), _full(1, 0.5)))
    assert np.allclose(half, 2 * luma - pink, atol=0.05)


def test_trivial_augment_applies_exactly_the_drawn_op():
    images = np.repeat(np.round(_photos(1)), len(TRIVIAL_OPS), axis=0)  # whole values, as decoded pixels
    op = np.arange(len(TRIVIAL_OPS), dtype="float32")  # image i gets op i at full strength
    out = _numpy(trivial_augment(images, op, _full(len(op), 1.0), _full(len(op), 1.0)))
    by_op = dict(zip(TRIVIAL_OPS, out))
    original = images[0]
    assert np.allclose(by_op["identity"], original, atol=1e-3)
    assert np.allclose(by_op["brightness"], np.clip(original * 1.9, 0, 255), atol=1e-2)
    assert np.allclose(by_op["solarize"], 255.0 - original, atol=1e-3)  # threshold 0 at magnitude 1
    assert np.allclose(by_op["posterize"], np.floor(original / 16) * 16, atol=1e-3)  # 4 bits
    # 0.3 * 16 = 4.8 px: output column x samples input column x + 4.8, between x + 4 and x + 5.
    assert np.allclose(by_op["translate_x"][:, :11], 0.2 * original[:, 4:15] + 0.8 * original[:, 5:16], atol=1e-2)
    for name in ("rotate", "shear_x", "shear_y", "translate_y", "contrast", "saturation"):
        assert not np.allclose(by_op[name], original, atol=1.0), name
    # Magnitude 0 leaves every op's image as it is.
    still = _numpy(trivial_augment(images, op, _full(len(op), 0.0), _full(len(op), 1.0)))
    for name, image in zip(TRIVIAL_OPS, still):
        if name != "autocontrast":  # not a magnitude op
            assert np.allclose(image, original, atol=1e-2), name


# -- the labelled preview -----------------------------------------------------------------------


def test_mix_label_names_the_classes_and_their_weights():
    classes = ["cat", "dog", "frog"]
    assert mix_label(np.array([0.0, 1.0, 0.0]), classes) == "dog"
    assert mix_label(np.array([0.62, 0.38, 0.0]), classes) == "cat .62 / dog .38"
    assert mix_label(np.array([0.25, 0.0, 0.75]), classes) == "frog .75 / cat .25"
    # Mixing an image with one of its own class: one class, weight 1.
    assert mix_label(np.array([0.0, 0.0, 1.0]), classes) == "frog"


def test_augment_preview_of_a_run_uses_its_augmentation_and_names_unknown_runs(tmp_path, monkeypatch):
    import comp.stages.preview
    from comp.cli import main

    from .conftest import make_competition

    monkeypatch.setenv("COMP_NO_ISOLATE", "1")
    data, workdir = make_competition(tmp_path / "d", per_class=8), tmp_path / "w"
    assert main(["train", "--data", str(data), "--workdir", str(workdir), "--model", "baseline", "--width", "0.125",
                 "--epochs", "1", "--folds", "2", "--fold", "0", "--augment", "photo", "--mixup", "0.4",
                 "--image-size", "24", "--name", "photos", "--quiet"]) == 0
    seen = {}
    real_grid = comp.stages.preview.preview_grid

    def spy(dataset, preset, mixup, cutmix, out_path, seed=0, **kwargs):
        seen.update(preset=preset, mixup=mixup, cutmix=cutmix, shape=dataset.train_x.shape[1:])
        return real_grid(dataset, preset, mixup, cutmix, out_path, seed, **kwargs)

    monkeypatch.setattr(comp.stages.preview, "preview_grid", spy)
    out = tmp_path / "preview.png"
    # --augment is ignored: the run's own settings win.
    assert main(["data", "augment-preview", "--workdir", str(workdir), "--run", "photos", "--augment", "none",
                 "--out", str(out), "--quiet"]) == 0
    assert seen == {"preset": "photo", "mixup": 0.4, "cutmix": 0.0, "shape": (24, 24, 3)}
    from PIL import Image

    with Image.open(out) as image:
        assert image.size[0] > 300 and image.size[1] > 300
    assert main(["data", "augment-preview", "--workdir", str(workdir), "--run", "nosuch", "--quiet"]) == 2


def test_unknown_run_is_one_line_naming_it_and_how_to_list_runs(tmp_path):
    from comp import Workspace
    from comp.stages.preview import preview_run
    from comp.core.errors import CompError

    with pytest.raises(CompError) as caught:
        preview_run(Workspace(tmp_path / "w"), "nosuch", tmp_path / "p.png")
    message = str(caught.value)
    assert "nosuch" in message and "comp report" in message and "\n" not in message


def test_photo_augmentations_keep_one_channel_images_gray():
    images = _photos(4)[..., :1]
    for preset in ("photo", "jitter"):
        out = _numpy(make_augment_layer(preset, seed=1)(images, training=True))
        assert out.shape == images.shape and 0 <= out.min() and out.max() <= 255.0 + 1e-3


@pytest.mark.parametrize("preset", ["alt-flip,trivial", "alt-flip-crop,rrc"])
def test_the_alternating_flip_coin_hashes_the_image_as_given_not_its_warped_copy(preset):
    # The coin must be the same for an image every epoch: a warp drawn anew each epoch before the
    # coin would turn the alternating flip into a random one.
    layer = make_augment_layer(preset, seed=0, steps_per_epoch=1)
    hashed = []
    coin = layer._alternating_flip
    layer._alternating_flip = lambda images: (hashed.append(_numpy(images)), coin(images))[1]
    images = _photos()
    layer(keras.ops.convert_to_tensor(images), training=True)
    assert len(hashed) == 1
    np.testing.assert_array_equal(hashed[0], images)
