"""FashionNet on a frozen pretrained backbone: the training model and the model it ships as.

Training (`build_training_model`) reads two inputs: the colour heads (`pixel_color_head`,
unchanged) read the image at the run's input size, the other heads read the backbone's pooled
features of the grayscale image, computed once per image (`fashionnet.model.feature_cache`).
Each such head is dropout then one dense layer (a logistic regression on the features).
With ``category_attention`` the training model also reads each image's 7x7 feature map before
pooling, and the colour heads pool by the category head's class activation map on it
(`outputs_on`); the bundle's model takes that map from its own Lite0 (`feature_map_model`).

The bundle's model (`build_inference_model`) takes one image at `BACKBONE_SIZE` px in [0, 1],
as every bundle's model does (``preprocessing.scale`` 1/255): the colour heads read a copy
resampled to the input size by two fixed matrix products (`resample_matrix`, the triangle
filter Pillow's bilinear resize uses, so the copy is what decoding at that size would give;
Keras' antialiased ``Resizing`` does not export to ONNX), the other heads read
grayscale -> three channels -> 0..255 -> EfficientNet-Lite0 (frozen) -> pooled features.
The trained head layers are copied in by name. Built-in and registered layers only: the
saved model loads in Keras safe mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from fashionnet.heads import HeadSpec
from fashionnet.model.fashionnet import category_head_for_map, pixel_color_head
from fashionnet.model.layers import Grayscale

#: The backbone's input size: 224 px beat 160 and 128 on both datasets (results/backbone/).
BACKBONE_SIZE = 224
#: Dropout on the pooled features before each feature head's dense layer.
FEATURE_DROPOUT = 0.2


def reads_features(head: HeadSpec) -> bool:
    """Every head but the colour heads reads the backbone's features."""
    return head.branch != "color"


def resample_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights of Pillow's bilinear resize along one axis: a triangle filter
    widened by the reduction factor (antialiasing), rows summing to one."""
    scale = source / target
    width = max(scale, 1.0)
    support = width  # the triangle's support, 1, widened
    out = np.zeros((target, source), np.float64)
    for i in range(target):
        centre = (i + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), source)
        x = np.arange(low, high)
        w = np.maximum(0.0, 1.0 - np.abs((x - centre + 0.5) / width))
        out[i, low:high] = w / w.sum()
    return out.astype(np.float32)


def resample_images(images: np.ndarray, size: int, batch_size: int = 64) -> np.ndarray:
    """uint8 (n, s, s, 3) -> uint8 (n, size, size, 3), as the shipped model's colour copy."""
    if images.shape[1] == size:
        return images
    matrix = resample_matrix(images.shape[1], size)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].astype(np.float32)
        y = np.einsum("hi,nijc,wj->nhwc", matrix, x, matrix, optimize=True)
        out[start:start + batch_size] = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return out


def resample_layers(image, source: int, size: int):
    """`resample_images` inside a model, on float images: fixed dense layers along each axis."""
    if source == size:
        return image, None
    kernel = resample_matrix(source, size).T  # (source, size)
    x = layers.Permute((3, 1, 2), name="color_resample_channels_first")(image)  # (c, h, w)
    x = layers.Dense(size, use_bias=False, trainable=False, name="color_resample_width")(x)
    x = layers.Permute((1, 3, 2), name="color_resample_swap")(x)  # (c, w', h)
    x = layers.Dense(size, use_bias=False, trainable=False, name="color_resample_height")(x)
    x = layers.Permute((3, 2, 1), name="color_resample_channels_last")(x)  # (h', w', c)
    return x, kernel


def feature_head(features, head: HeadSpec, dropout: float = FEATURE_DROPOUT):
    """Dropout, then one dense layer; returns (probabilities, the dense layer)."""
    x = layers.Dropout(dropout, name=f"{head.name}_feature_drop")(features)
    dense = layers.Dense(len(head.classes), name=f"{head.name}_logits")
    activation = "sigmoid" if head.multi else "softmax"
    return layers.Activation(activation, dtype="float32", name=head.output_name)(dense(x)), dense


def attention_head(heads: Sequence[HeadSpec]) -> HeadSpec | None:
    """The category head whose class activation map the colour heads pool over
    (`category_attention`), when there are colour heads to use it."""
    if all(reads_features(h) for h in heads):
        return None
    return category_head_for_map([h for h in heads if reads_features(h)])


def outputs_on(heads: Sequence[HeadSpec], image, features, feature_map=None,
               dropout: float = FEATURE_DROPOUT) -> list:
    """Every head's output: colour heads on ``image``, the others on ``features``; with a
    ``feature_map`` (B, h, w, dims) the colour heads also get `attention_head`'s class
    activation maps, its dense layer applied to every cell (the pooled features are the
    cells' mean, so the maps' mean is its logits)."""
    outputs, dense = {}, {}
    for h in heads:
        if reads_features(h):
            outputs[h.name], dense[h.name] = feature_head(features, h, dropout)
    focus = attention_head(heads) if feature_map is not None else None
    class_maps = dense[focus.name](feature_map) if focus is not None else None
    for h in heads:
        if not reads_features(h):
            outputs[h.name] = pixel_color_head(
                image, h, class_maps=class_maps,
                category_probabilities=outputs[focus.name] if focus is not None else None)
    return [outputs[h.name] for h in heads]


def training_inputs(heads: Sequence[HeadSpec], attention: bool = False) -> tuple[str, ...]:
    """The training model's inputs, in order: ``image`` if a colour head, ``features`` if any
    other head, ``feature_map`` if ``attention`` (`category_attention`) and `attention_head`."""
    names = []
    if any(not reads_features(h) for h in heads):
        names.append("image")
    if any(reads_features(h) for h in heads):
        names.append("features")
    if attention and attention_head(heads) is not None:
        names.append("feature_map")
    return tuple(names)


def build_training_model(heads: Sequence[HeadSpec], input_size: int, dims: int,
                         dropout: float = FEATURE_DROPOUT,
                         map_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """Colour heads on the image (``input_size`` px), the other heads on ``dims`` features;
    ``map_shape``: the colour heads pool by the category head's class activation map on a
    feature map of that shape (`category_attention`)."""
    names = training_inputs(heads, map_shape is not None)
    inputs = {}
    if "image" in names:
        inputs["image"] = keras.Input((input_size, input_size, 3), name="image")
    if "features" in names:
        inputs["features"] = keras.Input((dims,), name="features")
    if "feature_map" in names:
        inputs["feature_map"] = keras.Input(map_shape, name="feature_map")
    outputs = outputs_on(heads, inputs.get("image"), inputs.get("features"),
                         inputs.get("feature_map"), dropout)
    return keras.Model(inputs, outputs, name="fashionnet_on_features")


def build_inference_model(heads: Sequence[HeadSpec], input_size: int, backbone: keras.Model,
                          trained: keras.Model | None = None,
                          dropout: float = FEATURE_DROPOUT,
                          attention: bool = False) -> keras.Model:
    """One input at the backbone's size in [0, 1]; ``trained`` (`build_training_model`) gives
    the head layers' weights. ``backbone`` maps 0..255 pixels to pooled features; it is
    frozen here. ``attention`` (`category_attention`): the backbone's feature map before
    pooling also gives the colour heads the category head's class activation maps."""
    from fashionnet.model.efficientnet_lite import feature_map_model

    size = int(backbone.inputs[0].shape[1])
    image = keras.Input((size, size, 3), name="image")
    kernel = None
    features = small = feature_map = None
    if any(not reads_features(h) for h in heads):
        small, kernel = resample_layers(image, size, input_size)
    if any(reads_features(h) for h in heads):
        backbone.trainable = False
        gray = Grayscale(name="grayscale")(image)
        gray3 = layers.Concatenate(name="grayscale_rgb")([gray, gray, gray])
        pixels = layers.Rescaling(255.0, name="backbone_pixels")(gray3)
        if attention and attention_head(heads) is not None:
            feature_map = feature_map_model(backbone)(pixels, training=False)
            features = layers.GlobalAveragePooling2D(name="backbone_pool")(feature_map)
        else:
            features = backbone(pixels, training=False)
    outputs = outputs_on(heads, small, features, feature_map, dropout)
    model = keras.Model(image, outputs, name="fashionnet")
    if kernel is not None:
        model.get_layer("color_resample_width").set_weights([kernel])
        model.get_layer("color_resample_height").set_weights([kernel])
    if trained is not None:
        copy_head_weights(trained, model)
    return model


def copy_head_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copy every weighted layer of ``source`` into ``target``'s layer of the same name;
    returns their names. Every weighted layer must have its twin."""
    copied = []
    for layer in source.layers:
        if not layer.weights:
            continue
        twin = target.get_layer(layer.name)  # ValueError names a missing layer
        twin.set_weights(layer.get_weights())
        copied.append(layer.name)
    return copied
