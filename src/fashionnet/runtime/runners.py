"""Model runners: float32 batches in, one probability array per head out, in head order.

`OnnxRunner` needs only onnxruntime and NumPy; `KerasRunner` imports Keras on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from fashionnet.errors import FashionNetError
from fashionnet.files import check_regular_file
from fashionnet.open_set import EMBEDDING_SUFFIX as EMBEDDING


class Runner(Protocol):
    name: str
    #: (height, width, channels) the model takes, None where the model leaves it open
    input_shape: tuple[int | None, ...]
    #: the last dimension of each requested output, in the order asked for (None: unknown)
    output_widths: list[int | None]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]: ...


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _dim(value) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) and value > 0 else None


class KerasRunner:
    name = "keras"

    def __init__(self, path: Path, output_names: Sequence[str]):
        from fashionnet.extras import import_keras_quietly

        import_keras_quietly()
        import keras

        import fashionnet.model.layers  # noqa: F401  (registers the custom objects)

        check_regular_file(path, "Keras model file")
        try:
            # Safe mode: no Lambda layers, no arbitrary Python objects. Whatever Keras raises
            # for a tampered or broken file (ValueError, TypeError, KeyError, BadZipFile, ...)
            # is one line naming the file.
            self.model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:
            raise FashionNetError(f"{path}: cannot load the Keras model safely "
                                  f"({type(exc).__name__}: {_one_line(exc)})") from None
        try:
            names = list(self.model.output_names)
            wanted = [n for n in output_names if n not in names and n.endswith(EMBEDDING)]
            if wanted:  # a head's features: the input of its logits layer, as an output
                from fashionnet.model.embeddings import with_embeddings

                self.model = with_embeddings(self.model,
                                             [n[:-len(EMBEDDING)] for n in wanted])
                names = list(self.model.output_names)
            missing = [n for n in output_names if n not in names]
            if missing:
                raise FashionNetError(f"{path}: outputs {missing} missing (has {names})")
            self.order = [names.index(n) for n in output_names]
            inputs = list(self.model.inputs)
            if len(inputs) != 1:
                raise FashionNetError(f"{path}: the model has {len(inputs)} inputs, expected 1")
            self.input_shape = tuple(_dim(d) for d in tuple(inputs[0].shape)[1:])
            outputs = list(self.model.outputs)
            self.output_widths = [_dim(tuple(outputs[i].shape)[-1]) for i in self.order]
        except FashionNetError:
            raise
        except Exception as exc:  # a model that loads but is not a Functional network
            raise FashionNetError(f"{path}: not a usable FashionNet model "
                                  f"({type(exc).__name__}: {_one_line(exc)})") from None

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        import keras

        outputs = self.model(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [np.asarray(keras.ops.convert_to_numpy(outputs[i])) for i in self.order]


class OnnxRunner:
    name = "onnx"

    def __init__(self, path: Path, output_names: Sequence[str], threads: int | None = None,
                 spin: bool = False, hint: str = ""):
        """``hint``: said after "outputs [...] missing" when a head's features are missing."""
        import onnxruntime as ort

        check_regular_file(path, "ONNX model file")
        self.path, self.spin = path, spin
        options = session_options(threads, spin)
        self.threads = options.intra_op_num_threads
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own non-Python-standard types
            raise FashionNetError(f"{path}: cannot load the ONNX model ({_one_line(exc)})") from None
        available = {o.name: o for o in self.session.get_outputs()}
        missing = [n for n in output_names if n not in available]
        if missing:
            why = hint if any(n.endswith(EMBEDDING) for n in missing) else ""
            raise FashionNetError(f"{path}: outputs {missing} missing (has {list(available)})"
                                  f"{why}")
        self.outputs = list(output_names)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise FashionNetError(f"{path}: the model has {len(inputs)} inputs, expected 1")
        self.input = inputs[0].name
        self.input_shape = tuple(_dim(d) for d in list(inputs[0].shape or [])[1:])
        self.output_widths = [_dim((available[n].shape or [None])[-1]) for n in self.outputs]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.outputs, {self.input: batch.astype(np.float32)})

    def with_threads(self, threads: int, spin: bool = False) -> OnnxRunner:
        """A second session on the same file and outputs with another thread count."""
        return OnnxRunner(self.path, self.outputs, threads=threads, spin=spin)


def cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def session_options(threads: int | None = None, spin: bool = False):
    """ONNX Runtime session options, set on purpose rather than left to defaults.

    - ``intra_op_num_threads``: ``threads``, else one per core this process may use (ONNX
      Runtime's default counts the machine's physical cores, ignoring the affinity mask a
      container or ``taskset`` sets). A caller sharing the machine (a Ray actor per core)
      passes 1.
    - ``inter_op_num_threads`` = 1 and sequential execution: the network is one chain of
      convolutions, with nothing for a second pool to run in parallel; it would only add
      threads competing for the same cores.
    - ``allow_spinning`` off unless ``spin``: ONNX Runtime's workers otherwise spin after each
      op and each call, waiting for the next one. That helps only on cores nobody else wants;
      here decode threads (classify, the server) and other processes want them. Measured on
      the 2-core machine under load, interleaved: batch-1 latency 2.3 ms without spinning
      against 5.8 ms with it, batches of 32 at 402 against 203 img/s, CPU per call 2.3 against
      3.9 ms (results/current/onnx_session_options.md). With ``spin`` the threads spin within
      a call only (``session.force_spinning_stop``): the server's session for a request that
      has the machine to itself (one photo 8.0 -> 6.4 ms through the server).
    - all graph optimisations (the default level, stated).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads or cores()))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:  # spin within a call only: the threads sleep once it returns
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
