"""FashionNet: multi-output image classification, one head per attribute.

    import fashionnet
    result = fashionnet.train(fashionnet.TrainConfig(dataset="photos/"), output="runs/a")
    predictor = fashionnet.load("runs/a")
    print(predictor.predict_files(["photo.jpg"])[0])

Heavy modules (Keras) load on first use, so the light runtime imports stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fashionnet.bundle import Bundle, load_bundle
from fashionnet.config import TrainConfig
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec

__version__ = "0.1.0"
__all__ = ["Bundle", "FashionNetError", "HeadSpec", "Predictor", "TrainConfig", "evaluate",
           "load", "load_bundle", "train"]

if TYPE_CHECKING:
    from fashionnet.evaluation import evaluate
    from fashionnet.inference import Predictor, load
    from fashionnet.training import train

_LAZY = {"train": "fashionnet.training", "Predictor": "fashionnet.inference",
         "load": "fashionnet.inference", "evaluate": "fashionnet.evaluation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fashionnet' has no attribute {name!r}")
