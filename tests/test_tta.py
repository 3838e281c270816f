"""TTA views, policies and averaging, on small arrays (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from comp.core.errors import CompError
from comp.config.tta_policy import TTA_POLICIES, parse_policy, policy_for_augment, prediction_tag, views_for
from comp.engine.tta import average_logits, average_probs, average_views, predict_probs, softmax, view, view_fill


def image(h=3, w=4):
    """One (1,h,w,1) image whose pixel values are 1 + their raster index: every pixel is unique."""
    return (np.arange(h * w, dtype=np.uint8) + 1).reshape(1, h, w, 1)


def test_flip_mirrors_columns():
    x = image()
    assert np.array_equal(view(x, True, 0, 0)[0, :, :, 0], x[0, :, ::-1, 0])
    assert np.array_equal(view(x, False, 0, 0), x)


def test_shift_moves_content_right_and_down_with_zero_fill():
    x = image()
    right = view(x, False, 1, 0)[0, :, :, 0]
    assert np.array_equal(right[:, 1:], x[0, :, :-1, 0])  # content moved one pixel right
    assert (right[:, 0] == 0).all()  # the uncovered column is zero, not wrapped
    down_left = view(x, False, -2, 1)[0, :, :, 0]
    assert np.array_equal(down_left[1:, :-2], x[0, :-1, 2:, 0])
    assert (down_left[0] == 0).all() and (down_left[:, -2:] == 0).all()


def test_flip_then_shift():
    x = image()
    out = view(x, True, 1, 0)[0, :, :, 0]
    assert np.array_equal(out[:, 1:], x[0, :, ::-1, 0][:, :-1])
    assert view(x, True, 1, 0).dtype == np.uint8 and view(x, True, 1, 0).flags["C_CONTIGUOUS"]


def test_named_and_custom_policies():
    assert parse_policy("flip-shift") == "flip-shift"
    assert parse_policy(None) == "none"
    assert parse_policy("flip,shift=1") == "flip+shift1" == parse_policy("shift=1, flip") == parse_policy("flip+shift1")
    views = views_for("flip+shift1")
    assert len(views) == 10 and views[0] == (False, 0, 0)  # 5 offsets x 2 flips, the plain view first
    assert (True, 0, -1) in views and (False, 1, 0) in views
    assert views_for(parse_policy("shift=1,shift=2")) == [(False, 0, 0), (False, 1, 0), (False, -1, 0), (False, 0, 1),
                                                          (False, 0, -1), (False, 2, 0), (False, -2, 0), (False, 0, 2),
                                                          (False, 0, -2)]
    for policy in TTA_POLICIES:
        assert views_for(policy)[0] == (False, 0, 0)
    for bad in ("rotate", "shift=0", "shift=x", "shift=99"):
        with pytest.raises(CompError, match="--tta"):
            parse_policy(bad)


def test_prediction_tags():
    assert prediction_tag("none") == "" and prediction_tag("none", "logits") == ""
    assert prediction_tag("flip") == ".flip"
    assert prediction_tag("flip+shift1", "logits") == ".flip+shift1@logits"


def test_policy_for_augment():
    assert policy_for_augment("none") == "none"
    assert policy_for_augment("flip") == "flip"
    assert policy_for_augment("flip-crop") == "flip-shift"
    # Crops filled by mirroring get views whose shifts are filled by mirroring too, never black.
    for augment in ("airbench94", "airbench96", "flip-crop,reflect"):
        assert view_fill(policy_for_augment(augment)) == "reflect", augment


def test_averages():
    logits = np.array([[[2.0, 0.0]], [[0.0, 0.0]]])  # two views of one image
    probs = average_probs(logits)
    assert np.allclose(probs, (softmax(logits[0]) + softmax(logits[1])) / 2)
    assert np.allclose(average_logits(logits), softmax(np.array([[1.0, 0.0]])))
    assert np.allclose(average_views(logits, "probs"), probs)
    with pytest.raises(CompError):
        average_views(logits, "median")


def test_predict_probs_sees_every_view_in_order():
    import keras

    x = image()
    # Logits = the top-left and top-right pixels / 10: a mirrored view swaps them.
    inputs = keras.Input(x.shape[1:])
    corners = keras.layers.Lambda(lambda t: keras.ops.stack([t[:, 0, 0, 0], t[:, 0, -1, 0]], axis=1) / 10)(inputs)
    net = keras.Model(inputs, corners)
    probs = predict_probs(net, x, "flip")
    plain, mirrored = softmax(np.array([[0.1, 0.4]])), softmax(np.array([[0.4, 0.1]]))
    np.testing.assert_allclose(probs, (plain + mirrored) / 2, rtol=1e-5)
    assert probs.shape == (1, 2) and np.allclose(probs.sum(1), 1)


def test_airbench_views_are_weighted_and_reflected():
    x = image()
    assert np.array_equal(view(x, False, 1, 1, fill="reflect")[0, 0, :, 0], [6, 5, 6, 7])  # row 1 moved down, mirrored in
    logits = np.stack([np.full((1, 2), float(v)) * [1, 0] for v in range(6)])  # view v: logit v for class 0
    weights = np.array([1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8])
    expected = softmax(np.array([[weights @ np.arange(6), 0.0]]))
    np.testing.assert_allclose(average_views(logits, "probs", "airbench"), expected)  # its own average, whatever asked
    assert prediction_tag("airbench", "logits") == ".airbench"
