"""`comp transfer`: backbone table, input preprocessing, the two commands, weights and errors.

Everything runs with --weights none (random initialisation, no download) on a tiny generated
DACON folder: 3 classes x 12 random 32x32 images, so each model trains in seconds on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from comp.cli import main
from comp.data.demo import write_competition
from comp.core.errors import CompError
from comp.data.folds import parse_fold_selection
from comp.stages.transfer import (
    BACKBONES,
    RESULT_COLUMNS,
    build_base,
    build_transfer_model,
    download_error,
    input_pipeline,
    parse_backbones,
    preprocess_function,
    unfreeze_index,
    unfreeze_top,
)

CLASSES = ["cat", "dog", "fox"]
PER_CLASS = 12
SIZE = 32
TINY = ["--epochs", "1", "--batch-size", "8", "--weights", "none"]  # the fastest possible run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (len(CLASSES) * PER_CLASS, SIZE, SIZE, 3), dtype=np.uint8)
    train_y = np.repeat(np.arange(len(CLASSES)), PER_CLASS)
    test_x = rng.integers(0, 256, (6, SIZE, SIZE, 3), dtype=np.uint8)
    test_y = np.arange(6) % len(CLASSES)
    return write_competition(tmp_path_factory.mktemp("tiny") / "data", train_x, train_y, CLASSES, test_x, test_y)


def transfer(data, workdir, *args) -> int:
    return main(["transfer", *args, "--data", str(data), "--workdir", str(workdir)])


# -- the backbone table and its preprocessing ----------------------------------------------

# One uint8 batch holding the extremes and a mid grey, with R, G and B set differently so a
# channel swap shows: pixel 0 is pure red (255, 0, 0).
PIXELS = np.array([[[255, 0, 0], [0, 0, 0], [255, 255, 255], [128, 128, 128]]], dtype=np.uint8)[:, :, None, :]
IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def pipeline_output(name: str, batch: np.ndarray) -> np.ndarray:
    """What the model's own input pipeline hands the backbone for a uint8 batch."""
    import keras

    inputs, x = input_pipeline(BACKBONES[name], batch.shape[1:])
    return keras.ops.convert_to_numpy(keras.Model(inputs, x)(batch))


SELF_RESCALING = ["EfficientNetB0", "EfficientNetB1", "MobileNetV3Large"]
TF_STYLE = ["MobileNetV2", "ResNet50V2", "ResNet152V2", "InceptionV3", "Xception"]
CAFFE_STYLE = ["VGG16", "VGG19", "ResNet50"]
TORCH_STYLE = ["DenseNet121", "DenseNet169", "DenseNet201"]


@pytest.mark.parametrize("name", SELF_RESCALING)
def test_self_rescaling_backbones_get_raw_0_255_pixels(name):
    # These models rescale inside; feeding them [0, 1] left EfficientNet at chance accuracy.
    batch = np.tile(PIXELS, (1, SIZE // 4, SIZE, 1))  # 32x32, at the minimum: no resizing
    out = pipeline_output(name, batch)
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(255.0)
    np.testing.assert_allclose(out, batch.astype(np.float32), atol=1e-4)
    np.testing.assert_allclose(preprocess_function(BACKBONES[name])(batch.astype(np.float32)), batch, atol=1e-4)


@pytest.mark.parametrize("name", TF_STYLE)
def test_tf_style_backbones_get_minus_one_to_one(name):
    out = preprocess_function(BACKBONES[name])(PIXELS.astype(np.float32))
    assert out.min() == pytest.approx(-1.0) and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out[0, 1, 0], [-1, -1, -1], atol=1e-5)  # black
    np.testing.assert_allclose(out[0, 2, 0], [1, 1, 1], atol=1e-5)  # white


@pytest.mark.parametrize("name", CAFFE_STYLE)
def test_caffe_style_backbones_get_bgr_minus_imagenet_mean(name):
    out = preprocess_function(BACKBONES[name])(PIXELS.astype(np.float32))
    # Pure red (255, 0, 0) becomes BGR (0, 0, 255) minus the mean, not scaled.
    np.testing.assert_allclose(out[0, 0, 0], np.array([0, 0, 255]) - IMAGENET_MEAN_BGR, atol=1e-3)
    np.testing.assert_allclose(out[0, 1, 0], -IMAGENET_MEAN_BGR, atol=1e-3)
    assert out.max() > 100  # still on the 0-255 scale


@pytest.mark.parametrize("name", TORCH_STYLE)
def test_torch_style_backbones_get_standardised_rgb(name):
    out = preprocess_function(BACKBONES[name])(PIXELS.astype(np.float32))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[0, 0, 0], (np.array([1, 0, 0]) - mean) / std, atol=1e-4)


def test_every_backbone_has_a_preprocessing_check():
    # A backbone added to the table without joining one of the checks above fails here.
    groups = [SELF_RESCALING, TF_STYLE, CAFFE_STYLE, TORCH_STYLE]
    checked = [name for group in groups for name in group]
    assert sorted(checked) == sorted(BACKBONES)  # each backbone checked exactly once


def test_pipeline_upsamples_to_the_backbone_minimum():
    batch = np.zeros((2, SIZE, SIZE, 3), dtype=np.uint8)
    assert pipeline_output("InceptionV3", batch).shape == (2, 75, 75, 3)
    assert pipeline_output("Xception", batch).shape == (2, 71, 71, 3)
    assert pipeline_output("MobileNetV2", batch).shape == (2, SIZE, SIZE, 3)  # already big enough


@pytest.mark.parametrize("name", list(BACKBONES))
def test_table_matches_keras(name):
    """Constructor, minimum size and default unfreeze layer are what this Keras version has."""
    import keras

    backbone = BACKBONES[name]
    keras.backend.clear_session()
    base = build_base(backbone, "none", (backbone.min_size, backbone.min_size))
    assert backbone.unfreeze_from in [layer.name for layer in base.layers]
    with pytest.raises(ValueError, match="at least"):
        getattr(keras.applications, name)(include_top=False, weights=None,
                                          input_shape=(backbone.min_size - 1, backbone.min_size - 1, 3))


# -- options and fine-tuning mechanics -----------------------------------------------------


def test_parse_backbones():
    assert len(parse_backbones("all")) == 14
    assert [b.name for b in parse_backbones("resnet50v2, MobileNetV2")] == ["ResNet50V2", "MobileNetV2"]
    with pytest.raises(CompError, match="unknown backbone"):
        parse_backbones("ResNet18")


def test_parse_fold_selection():
    assert parse_fold_selection("all", 3) == [0, 1, 2]
    assert parse_fold_selection("2,0", 3) == [0, 2]
    assert parse_fold_selection(" ALL ", 2) == [0, 1]
    with pytest.raises(CompError, match=r"fold 3 does not exist; folds are 0\.\.2"):
        parse_fold_selection("3", 3)
    with pytest.raises(CompError, match="a list like 0,2"):
        parse_fold_selection("first", 3)


def test_unfreeze_keeps_batchnorm_frozen_and_early_layers_frozen():
    import keras

    keras.backend.clear_session()
    backbone = BACKBONES["ResNet50V2"]
    model, base = build_transfer_model(backbone, "none", (SIZE, SIZE, 3), len(CLASSES))
    start = unfreeze_index(base, backbone, backbone.unfreeze_from)
    assert unfreeze_top(base, start) > 0
    by_name = {layer.name: layer for layer in base.layers}
    assert by_name["conv5_block1_1_conv"].trainable and not by_name["conv4_block6_1_conv"].trainable
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    # A training step must leave the ImageNet BatchNorm statistics alone.
    batchnorm = by_name["conv5_block1_preact_bn"]
    before = batchnorm.moving_mean.numpy().copy()
    model(np.full((4, SIZE, SIZE, 3), 200, dtype=np.uint8), training=True)
    np.testing.assert_array_equal(batchnorm.moving_mean.numpy(), before)


def test_unknown_layer_suggests_real_names():
    import keras

    keras.backend.clear_session()
    backbone = BACKBONES["ResNet50V2"]
    base = build_base(backbone, "none", (SIZE, SIZE))
    with pytest.raises(CompError, match=r"ResNet50V2 has no such layer; try conv5_block1_preact_bn"):
        unfreeze_index(base, backbone, "conv5_block1_preact")


# -- comp transfer compare -----------------------------------------------------------------


def test_compare_writes_table_csv_plot_and_pretrained_config(tiny_data, tmp_path, capsys):
    assert transfer(tiny_data, tmp_path, "compare", "--backbones", "MobileNetV2,EfficientNetB0", *TINY) == 0
    study = tmp_path / "studies" / "compare"
    results = pd.read_csv(study / "results.csv")
    assert list(results.columns) == [key for key, _, _ in RESULT_COLUMNS]
    assert list(results.backbone) == ["EfficientNetB0", "MobileNetV2"]  # table order
    assert results.val_accuracy.between(0, 1).all() and (results.total_seconds > 0).all()
    assert (results.trainable_params < results.params).all()  # the base is frozen
    assert (study / "comparison.png").stat().st_size > 0
    config = json.loads((study / "study.json").read_text())
    assert not (study / "config.json").exists()  # a comparison is a study, not a run
    assert config["pretrained"] is True
    assert config["weights"] == "none" and config["epochs"] == 1 and config["limit"] == 0
    assert config["backbones"] == ["MobileNetV2", "EfficientNetB0"] and config["classes"] == CLASSES
    assert len(config["data_fingerprint"]) == 16
    printed = capsys.readouterr().out
    assert "MobileNetV2" in printed and "val" in printed and "epoch" in printed
    # Kept apart from submissions: nothing but the shared data cache outside studies/.
    assert not (tmp_path / "submissions").exists()
    assert [p.name for p in (tmp_path / "folds").iterdir()] == ["cache"]

    # The same command again resumes: finished backbones are kept, not retrained.
    capsys.readouterr()
    assert transfer(tiny_data, tmp_path, "compare", "--backbones", "MobileNetV2", *TINY) == 0
    assert "done earlier" in capsys.readouterr().out
    # Other settings under the same name would mix results: refused.
    assert transfer(tiny_data, tmp_path, "compare", "--backbones", "MobileNetV2", *TINY, "--epochs", "2") == 2
    assert "pass another --name" in capsys.readouterr().err


# -- comp transfer finetune ----------------------------------------------------------------


def test_finetune_kfold_is_a_run_on_the_workspace_split(tiny_data, tmp_path, capsys):
    args = ["finetune", "--backbone", "MobileNetV2", "--epochs-head", "1", "--folds", "2", "--name", "ft", *TINY]
    assert transfer(tiny_data, tmp_path, *args, "--fold", "0") == 0
    study = tmp_path / "studies" / "ft"
    assert not (study / "oof_probs.npy").exists()  # only once every fold is done
    assert transfer(tiny_data, tmp_path, *args, "--fold", "1") == 0
    rows, probs = np.load(study / "oof_rows.npy"), np.load(study / "oof_probs.npy")
    assert rows.tolist() == list(range(len(CLASSES) * PER_CLASS))
    assert probs.shape == (len(rows), len(CLASSES))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # The folds are the workspace's own split (folds/folds.csv), as comp train's runs use.
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv")["fold"].to_numpy()
    for k in range(2):
        fold = study / f"fold{k}"
        val_probs = np.load(fold / "val_probs.npy")
        assert val_probs.shape == ((folds == k).sum(), len(CLASSES))
        np.testing.assert_allclose(probs[folds == k], val_probs)
        assert np.load(fold / "test_probs.npy").shape == (6, len(CLASSES))
        metrics = json.loads((fold / "metrics.json").read_text())
        assert metrics["unfreeze_from"] == "block_13_expand" and metrics["unfrozen_layers"] > 0
    manifest = json.loads((study / "config.json").read_text())
    assert manifest["kind"] == "transfer" and manifest["pretrained"] is True
    assert manifest["config"]["backbone"] == "MobileNetV2" and manifest["split"]["k"] == 2
    assert manifest["split"]["hash"] == json.loads((tmp_path / "folds" / "folds.json").read_text())["hash"]
    # So it blends with comp train's runs row for row -- only when pretrained weights are allowed.
    assert main(["train", "--data", str(tiny_data), "--workdir", str(tmp_path), "--model", "baseline", "--width",
                 "0.25", "--epochs", "1", "--folds", "2", "--name", "scratch", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["ensemble", "--workdir", str(tmp_path), "--runs", "scratch,studies/ft", "--out", "x.csv",
                 "--quiet"]) == 2
    assert "pretrained" in capsys.readouterr().err
    assert main(["ensemble", "--workdir", str(tmp_path), "--runs", "scratch,studies/ft", "--out", "x.csv",
                 "--allow-pretrained", "--quiet"]) == 0


def test_finetune_bad_unfreeze_layer_is_a_clean_error(tiny_data, tmp_path, capsys):
    code = transfer(tiny_data, tmp_path, "finetune", "--backbone", "ResNet50V2", "--unfreeze-from", "conv5_block1",
                    *TINY)
    err = capsys.readouterr().err
    assert code == 2 and "ResNet50V2" in err and "conv5_block1_" in err
    assert err.count("\n") == 1  # one line, no traceback
    assert not list((tmp_path / "studies").glob("**/metrics.json"))  # refused before any training


# -- weights -------------------------------------------------------------------------------


def test_offline_imagenet_is_a_clean_error(tiny_data, tmp_path, capsys, monkeypatch):
    # Keras applications download through this function; make it fail the way it does offline.
    from keras.src.utils import file_utils

    def offline(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    code = transfer(tiny_data, tmp_path, "compare", "--backbones", "MobileNetV2", "--weights", "imagenet",
                    "--epochs", "1")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5" in err
    assert ".keras/models" in err and "--weights PATH" in err


def test_download_error_without_url_names_the_table_file():
    message = str(download_error(BACKBONES["EfficientNetB0"], ValueError("hash mismatch")))
    assert "efficientnetb0_notop.h5" in message and "--weights none" in message


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, loading the mismatched file
def test_weights_path_is_loaded_into_the_base(tmp_path):
    import keras

    keras.backend.clear_session()
    backbone = BACKBONES["MobileNetV2"]
    keras.utils.set_random_seed(1)
    saved = build_base(backbone, "none", (SIZE, SIZE))
    path = tmp_path / "mobilenet.weights.h5"
    saved.save_weights(path)
    keras.utils.set_random_seed(2)  # a different random start, overwritten by the file
    loaded = build_base(backbone, str(path), (SIZE, SIZE))
    np.testing.assert_array_equal(saved.weights[0].numpy(), loaded.weights[0].numpy())
    with pytest.raises(CompError, match="does not fit VGG16"):
        build_base(BACKBONES["VGG16"], str(path), (SIZE, SIZE))


def test_missing_weights_file_is_a_clean_error(tiny_data, tmp_path, capsys):
    code = transfer(tiny_data, tmp_path, "compare", "--backbones", "MobileNetV2", "--weights", "nope.h5")
    assert code == 2 and "no such file" in capsys.readouterr().err
