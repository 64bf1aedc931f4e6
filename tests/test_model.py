import keras
import numpy as np
import pytest

from fashionnet.heads import HeadSpec
from fashionnet.model.fashionnet import build_model
from fashionnet.model.layers import Grayscale, HeadAccuracy, HeadLoss

HEADS = [HeadSpec("color", ["black", "blue", "red"], branch="color"),
         HeadSpec("category", ["dress", "jeans", "shirt", "shoes"], branch="gray")]


def test_recipe_model_outputs_and_branches():
    model = build_model(HEADS, variant="recipe")
    assert model.output_names == ["color_output", "category_output"]
    assert model.input_shape == (None, 96, 96, 3)
    out = model(np.zeros((2, 96, 96, 3), np.float32))
    assert out[0].shape == (2, 3) and out[1].shape == (2, 4)
    np.testing.assert_allclose(np.asarray(out[1]).sum(axis=1), 1.0, rtol=1e-5)
    names = [layer.name for layer in model.layers]
    assert "grayscale" in names
    conv_filters = [layer.filters for layer in model.layers if "conv" in layer.name]
    assert conv_filters == [32, 64, 64, 128, 128, 16, 32, 32] or \
        sorted(conv_filters) == sorted([32, 64, 64, 128, 128, 16, 32, 32])


def test_category_branch_is_blind_to_colour():
    """Two images with the same luminance but different hue give the same category output."""
    model = build_model(HEADS, input_size=48)
    red = np.zeros((1, 48, 48, 3), np.float32)
    red[..., 0] = 0.5870
    green = np.zeros((1, 48, 48, 3), np.float32)
    green[..., 1] = 0.2989
    a, b = model(red), model(green)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-5)
    assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-5)


def test_grayscale_layer_serialises():
    layer = Grayscale()
    clone = Grayscale.from_config(layer.get_config())
    x = np.random.default_rng(0).random((1, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(clone(x)), np.asarray(layer(x)))
    assert clone(x).shape == (1, 4, 4, 1)


def test_masked_rows_do_not_contribute_to_the_loss():
    y_true = np.array([[1, 0, 0], [-1, -1, -1], [0, 1, 0]], np.float32)
    y_pred = np.array([[.7, .2, .1], [.1, .1, .8], [.3, .6, .1]], np.float32)
    loss = HeadLoss()
    expected = -(np.log(.7) + np.log(.6)) / 2
    assert float(loss(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    other = y_pred.copy()
    other[1] = [.9, .05, .05]  # change only the masked row's prediction
    assert float(loss(y_true, other)) == pytest.approx(expected, rel=1e-5)
    # and its gradient is exactly zero
    import tensorflow as tf

    p = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        value = loss(tf.constant(y_true), p)
    grad = tape.gradient(value, p).numpy()
    assert np.all(grad[1] == 0) and np.any(grad[0] != 0)


def test_multilabel_loss_class_weights_and_focal():
    y_true = np.array([[1, 0], [-1, -1]], np.float32)
    y_pred = np.array([[.8, .4], [.5, .5]], np.float32)
    plain = float(HeadLoss(multi=True)(y_true, y_pred))
    assert plain == pytest.approx(-(np.log(.8) + np.log(.6)) / 2, rel=1e-5)
    weighted = float(HeadLoss(multi=True, class_weights=[3.0, 1.0])(y_true, y_pred))
    assert weighted == pytest.approx(-(3 * np.log(.8) + np.log(.6)) / 2, rel=1e-5)
    assert float(HeadLoss(multi=True, focal_gamma=2.0)(y_true, y_pred)) < plain


def test_head_accuracy_skips_unknown_rows():
    metric = HeadAccuracy()
    metric.update_state(np.array([[1, 0], [-1, -1], [0, 1]], np.float32),
                        np.array([[.9, .1], [.9, .1], [.9, .1]], np.float32))
    assert float(metric.result()) == pytest.approx(0.5)
    restored = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(restored, HeadAccuracy)


def test_gap_variant_has_the_same_outputs_and_fewer_parameters():
    recipe, gap = build_model(HEADS, 64, "recipe"), build_model(HEADS, 64, variant="gap")
    assert gap.output_names == recipe.output_names
    assert gap.count_params() < recipe.count_params() / 2
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(HEADS, variant="resnet")
