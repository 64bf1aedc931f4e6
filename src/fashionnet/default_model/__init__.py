"""The bundle `fashionnet classify` and `fashionnet serve` use when no ``--model`` is given.

The default architecture trained on the fashion dataset of the Keras recipe (colours black,
blue, red; categories dress, jeans, shirt, shoes), exported to ONNX so that it runs without
TensorFlow. How it was made and what it scores: README, "The shipped model"; its own
``metrics.json`` and ``config.json`` sit beside it.
"""

from __future__ import annotations

from pathlib import Path


def default_model_path() -> Path:
    """The folder of the shipped bundle (labels.json, model.onnx, config.json, metrics.json)."""
    return Path(__file__).resolve().parent
