"""The bundle `fashionnet classify` and `fashionnet serve` use when no ``--model`` is given.

FashionNet with the pretrained category branch (``--backbone efficientnet-lite0``: a frozen
ImageNet EfficientNet-Lite0 on the grayscale image at 224 px, the shape-blind colour head at
64 px, pooling where the category head sees the garment: ``category_attention``) trained on
the fashion dataset of the Keras recipe (colours black, blue, red; categories
dress, jeans, shirt, shoes), exported to ONNX so that it runs without TensorFlow. Its own
``metrics.json``, ``config.json``, ``split.json`` and ``MODEL_CARD.md`` sit beside it.
"""

from __future__ import annotations

from pathlib import Path


def default_model_path() -> Path:
    """The folder of the shipped bundle (labels.json, model.onnx, config.json, metrics.json)."""
    return Path(__file__).resolve().parent
