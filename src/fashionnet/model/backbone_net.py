"""FashionNet on a frozen pretrained backbone: the training model and the model it ships as.

Training (`build_training_model`) reads two inputs: the colour heads (`pixel_color_head`,
unchanged) read the image at the run's input size, the other heads read the backbone's pooled
features of the grayscale image, computed once per image (`fashionnet.model.feature_cache`).
Each such head is dropout then one dense layer (a logistic regression on the features).

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
from fashionnet.model.fashionnet import pixel_color_head
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
    x = layers.Dropout(dropout, name=f"{head.name}_feature_drop")(features)
    x = layers.Dense(len(head.classes), name=f"{head.name}_logits")(x)
    activation = "sigmoid" if head.multi else "softmax"
    return layers.Activation(activation, dtype="float32", name=head.output_name)(x)


def training_inputs(heads: Sequence[HeadSpec]) -> tuple[str, ...]:
    """The training model's inputs, in order: ``image`` if a colour head, ``features`` if any
    other head."""
    names = []
    if any(not reads_features(h) for h in heads):
        names.append("image")
    if any(reads_features(h) for h in heads):
        names.append("features")
    return tuple(names)


def build_training_model(heads: Sequence[HeadSpec], input_size: int, dims: int,
                         dropout: float = FEATURE_DROPOUT) -> keras.Model:
    """Colour heads on the image (``input_size`` px), the other heads on ``dims`` features."""
    names = training_inputs(heads)
    inputs = {}
    if "image" in names:
        inputs["image"] = keras.Input((input_size, input_size, 3), name="image")
    if "features" in names:
        inputs["features"] = keras.Input((dims,), name="features")
    outputs = [feature_head(inputs["features"], h, dropout) if reads_features(h)
               else pixel_color_head(inputs["image"], h) for h in heads]
    return keras.Model(inputs, outputs, name="fashionnet_on_features")


def build_inference_model(heads: Sequence[HeadSpec], input_size: int, backbone: keras.Model,
                          trained: keras.Model | None = None,
                          dropout: float = FEATURE_DROPOUT) -> keras.Model:
    """One input at the backbone's size in [0, 1]; ``trained`` (`build_training_model`) gives
    the head layers' weights. ``backbone`` maps 0..255 pixels to pooled features; it is
    frozen here."""
    size = int(backbone.inputs[0].shape[1])
    image = keras.Input((size, size, 3), name="image")
    kernel = None
    features = small = None
    if any(not reads_features(h) for h in heads):
        small, kernel = resample_layers(image, size, input_size)
    if any(reads_features(h) for h in heads):
        backbone.trainable = False
        gray = Grayscale(name="grayscale")(image)
        gray3 = layers.Concatenate(name="grayscale_rgb")([gray, gray, gray])
        pixels = layers.Rescaling(255.0, name="backbone_pixels")(gray3)
        features = backbone(pixels, training=False)
    outputs = [feature_head(features, h, dropout) if reads_features(h)
               else pixel_color_head(small, h) for h in heads]
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
