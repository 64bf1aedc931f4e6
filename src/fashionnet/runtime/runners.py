"""Model runners: float32 batches in, one probability array per head out, in head order.

`OnnxRunner` needs only onnxruntime and NumPy; `KerasRunner` imports Keras on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from fashionnet.errors import FashionNetError


class Runner(Protocol):
    name: str

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]: ...


class KerasRunner:
    name = "keras"

    def __init__(self, path: Path, output_names: Sequence[str]):
        import keras

        import fashionnet.model.layers  # noqa: F401  (registers the custom objects)

        try:
            self.model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except (OSError, ValueError) as exc:
            raise FashionNetError(f"{path}: cannot load the Keras model ({exc})") from None
        names = list(self.model.output_names)
        missing = [n for n in output_names if n not in names]
        if missing:
            raise FashionNetError(f"{path}: outputs {missing} missing (has {names})")
        self.order = [names.index(n) for n in output_names]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        import keras

        outputs = self.model(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [np.asarray(keras.ops.convert_to_numpy(outputs[i])) for i in self.order]


class OnnxRunner:
    name = "onnx"

    def __init__(self, path: Path, output_names: Sequence[str], threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own non-Python-standard types
            raise FashionNetError(f"{path}: cannot load the ONNX model ({exc})") from None
        available = [o.name for o in self.session.get_outputs()]
        missing = [n for n in output_names if n not in available]
        if missing:
            raise FashionNetError(f"{path}: outputs {missing} missing (has {available})")
        self.outputs = list(output_names)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.input: batch.astype(np.float32)})


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
