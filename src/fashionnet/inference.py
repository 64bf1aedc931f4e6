"""Predictions from a bundle: files or arrays in, labelled per-head results out.

    predictor = fashionnet.load("runs/recipe")
    result = predictor.predict_files(["dress.jpg"])[0]
    result.heads["category"].label, result.heads["category"].probability

Preprocessing is the bundle's own (`decode_image` with its size), exactly as in training.
A single-label head with an out-of-set rule (`fashionnet.open_set`) answers ``unknown`` when
the image is too far from what it was trained on, its best guess kept as ``guess``;
``abstain=False`` turns that off.
Runs the exported ONNX model when the bundle has one and onnxruntime is installed (no
TensorFlow import), else the Keras model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fashionnet.bundle import Bundle, load_bundle
from fashionnet.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from fashionnet.data.sources import IMAGE_SUFFIXES, image_files
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec
from fashionnet.metrics import apply_temperature
from fashionnet.open_set import OpenSetRule, embedding_name
from fashionnet.runtime.runners import KerasRunner, OnnxRunner, Runner, cores, onnx_available

BACKENDS = ("auto", "onnx", "keras")
#: fp32: model.onnx; int8: model.int8.onnx (`fashionnet export --int8`); auto: int8 when the
#: bundle has model.int8.onnx and the backend is ONNX, else fp32. On the shipped model int8
#: left exact match on the fashion test split unchanged (results/current/int8.md: 95.05 % both).
PRECISIONS = ("auto", "fp32", "int8")
INT8_FILE = "model.int8.onnx"
#: Images per model call. Small on purpose: on 2 cores the shipped model ran 64 photos at
#: 207 img/s in calls of 4, 202 in calls of 8 and 148 in calls of 64 (median of 4 interleaved
#: rounds; the activations of a big batch fall out of the CPU caches), and the scratch network
#: behaves alike (results/current/benchmarks_serving.md).
BATCH_SIZE = 8
__all__ = ["BACKENDS", "IMAGE_SUFFIXES", "Prediction", "Predictor", "expand_inputs", "load"]


class OutOfSet(NamedTuple):
    """A head's out-of-set verdict on a batch (`Predictor.out_of_set`)."""

    scores: np.ndarray
    unknown: np.ndarray
    share: np.ndarray


@dataclasses.dataclass
class HeadPrediction:
    """One head's answer: the label (or set of labels for a multi-label head).

    ``unknown``: the head abstains. A single-label head's ``label`` is then None (its best
    guess stays in ``guess``, with its probability); a multi-label head's is ``[]``, none of its
    labels being over the threshold. ``out_of_set``: the share of the correctly answered
    validation images that looked more familiar (None for a head without a rule).
    """

    label: str | list[str] | None
    probability: float | list[float]
    probabilities: dict[str, float]
    multi: bool = False
    unknown: bool = False
    out_of_set: float | None = None

    @property
    def guess(self) -> str:
        """The most probable class, whether or not the head answered it."""
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def describe(self) -> str:
        known = ", ".join(self.probabilities)
        if self.multi:
            if self.unknown:
                return (f"none of {known} (highest: {self.guess} "
                        f"{self.probabilities[self.guess]:.2%})")
            items = ", ".join(f"{lab} ({p:.2%})" for lab, p in zip(self.label, self.probability))
            return f"[{items}]"
        if self.unknown:
            return (f"unknown: not one of {known} (closest: {self.guess} "
                    f"{self.probability:.2%}, out-of-set {self.out_of_set:.2f})")
        return f"{self.label} ({self.probability:.2%})"

    def to_dict(self) -> dict:
        # what dataclasses.asdict gives, built directly: asdict's recursive deep copy was a
        # tenth of the server's per-request CPU
        return {"label": list(self.label) if self.multi else self.label,
                "probability": list(self.probability) if self.multi else self.probability,
                "probabilities": dict(self.probabilities), "multi": self.multi,
                "unknown": self.unknown, "guess": self.guess, "out_of_set": self.out_of_set}


@dataclasses.dataclass
class Prediction:
    source: str
    heads: dict[str, HeadPrediction] = dataclasses.field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error:
            return {"source": self.source, "error": self.error}
        return {"source": self.source,
                "heads": {name: h.to_dict() for name, h in self.heads.items()}}


def head_prediction(head: HeadSpec, probs: np.ndarray, unknown: bool = False,
                    out_of_set: float | None = None) -> HeadPrediction:
    """``unknown``, ``out_of_set``: the verdict of the head's out-of-set rule, if it has one."""
    table = {c: round(float(p), 6) for c, p in zip(head.classes, probs)}
    if head.multi:
        chosen = [i for i in np.argsort(-probs) if probs[i] >= head.threshold]
        return HeadPrediction([head.classes[i] for i in chosen],
                              [round(float(probs[i]), 6) for i in chosen], table, multi=True,
                              unknown=not chosen)
    top = int(np.argmax(probs))
    share = None if out_of_set is None else round(float(out_of_set), 4)
    return HeadPrediction(None if unknown else head.classes[top], round(float(probs[top]), 6),
                          table, unknown=unknown, out_of_set=share)


class Predictor:
    """A loaded bundle, ready to classify. ``backend``: auto (ONNX if possible), onnx, keras;
    ``abstain``: apply the bundle's out-of-set rules (answer ``unknown``)."""

    def __init__(self, bundle: Bundle, backend: str = "auto", calibrated: bool = True,
                 batch_size: int = BATCH_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                 threads: int | None = None, precision: str = "auto", spin: bool = False,
                 abstain: bool = True):
        if backend not in BACKENDS:
            raise FashionNetError(f"backend must be one of {BACKENDS}, not {backend!r}")
        if precision not in PRECISIONS:
            raise FashionNetError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if precision == "auto":
            precision = "int8" if (backend != "keras" and _present(bundle.path / INT8_FILE)
                                   and onnx_available()) else "fp32"
        self.precision = precision
        self.bundle = bundle
        self.heads = bundle.heads
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.temperatures = bundle.temperatures if calibrated else {}
        self.rules: dict[str, OpenSetRule] = dict(bundle.open_set) if abstain else {}
        #: heads whose rule reads their features: the model is asked for those too
        self.embedded = [name for name, rule in self.rules.items() if rule.score == "embedding"]
        outputs = [h.output_name for h in self.heads] + [embedding_name(n) for n in self.embedded]
        onnx_path = bundle.path / INT8_FILE if self.precision == "int8" else bundle.onnx_path
        if self.precision == "int8" and backend == "keras":
            raise FashionNetError("--int8 runs the quantized ONNX model: use --backend onnx "
                                  "or auto")
        use_onnx = backend == "onnx" or self.precision == "int8" or (
            backend == "auto" and _present(onnx_path) and onnx_available())
        if use_onnx:
            if not _present(onnx_path):
                flag = " --int8" if self.precision == "int8" else ""
                raise FashionNetError(f"{onnx_path}: missing; run `fashionnet export "
                                      f"{bundle.path}{flag}` first")
            # threads: a process that shares its machine (a Ray actor per core) caps ONNX
            # Runtime's pool, which otherwise takes every core; spin: see session_options.
            self.runner: Runner = OnnxRunner(onnx_path, outputs, threads=threads, spin=spin,
                                             hint=self._no_embedding_hint())
        else:
            if not _present(bundle.keras_path):
                raise FashionNetError(f"{bundle.keras_path}: missing from the bundle")
            try:
                self.runner = KerasRunner(bundle.keras_path, outputs)
            except ImportError as exc:
                raise FashionNetError(_no_keras(bundle, backend, exc)) from None
        self._check_model(onnx_path if use_onnx else bundle.keras_path)

    def _no_embedding_hint(self) -> str:
        """Said when model.onnx lacks the head features a rule reads (an older export)."""
        if not self.embedded:
            return ""
        again = f"`fashionnet export {self.bundle.path} --overwrite`" + (
            f", then `fashionnet export {self.bundle.path} --int8`"
            if self.precision == "int8" else "")
        return (f"; {self.bundle.path / 'labels.json'} has out-of-set rules that read them: "
                f"export again ({again}), or pass --no-abstain")

    def _check_model(self, model_path: Path) -> None:
        """The model must match labels.json: input size, and one output unit per class."""
        labels = self.bundle.path / "labels.json"
        size = self.bundle.preprocessing.size
        shape = tuple(getattr(self.runner, "input_shape", ()) or ())
        if shape and (len(shape) != 3 or shape[2] not in (None, 3)
                      or any(d not in (None, size) for d in shape[:2])):
            raise FashionNetError(
                f"{model_path}: takes input {shape} but {labels} field 'preprocessing.size' "
                f"says {size}x{size}x3")
        widths = getattr(self.runner, "output_widths", None) or [None] * len(self.heads)
        for i, (head, width) in enumerate(zip(self.heads, widths)):
            if width is not None and width != len(head.classes):
                raise FashionNetError(
                    f"{model_path}: output {head.output_name!r} has {width} units but {labels} "
                    f"field 'heads[{i}].classes' lists {len(head.classes)} classes")
        for name, width in zip(self.embedded, widths[len(self.heads):]):
            dims = len(self.rules[name].means[0])
            if width is not None and width != dims:
                raise FashionNetError(
                    f"{model_path}: output {embedding_name(name)!r} has {width} units but {labels} "
                    f"field open_set.{name}.means has {dims}")

    def self_test(self) -> None:
        """One real prediction on a blank image; raises FashionNetError if anything is off.

        Catches what static checks cannot: a model whose outputs have the wrong shape at run
        time, or that returns NaN.
        """
        size = self.bundle.preprocessing.size
        blank = np.full((1, size, size, 3), 255, np.uint8)
        try:
            probs, embeddings = self.predict_outputs(blank)
            self.out_of_set(probs, embeddings)
        except FashionNetError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:300]
            raise FashionNetError(f"{self.bundle.path}: a test prediction failed "
                                  f"({type(exc).__name__}: {text})") from None
        for head, p in zip(self.heads, probs):
            if p.shape != (1, len(head.classes)):
                raise FashionNetError(f"{self.bundle.path}: head {head.name!r} answered shape "
                                      f"{p.shape}, expected (1, {len(head.classes)})")
            if not np.isfinite(p).all():
                raise FashionNetError(f"{self.bundle.path}: head {head.name!r} answered "
                                      f"non-finite probabilities on a blank image")
        self.check_head_kinds()

    def check_head_kinds(self) -> None:
        """Each head's kind in labels.json must match the model's output: a softmax's rows sum
        to 1 whatever the image, independent sigmoids' do not. A labels.json whose head kind
        was switched would otherwise read one as the other without a word."""
        size = self.bundle.preprocessing.size
        images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        images[0] = 255
        try:
            raw = self.predict_probabilities(images, calibrated=False)
        except Exception:  # noqa: BLE001 - a model that cannot answer fails where it is used
            return
        for i, (head, p) in enumerate(zip(self.heads, raw)):
            if len(head.classes) < 2 or p.shape != (3, len(head.classes)) \
                    or not np.isfinite(p).all():
                continue  # shape and NaN problems have their own, clearer errors
            softmax = bool(np.allclose(p.sum(axis=1), 1.0, rtol=0, atol=1e-5))
            if softmax == head.multi:
                raise FashionNetError(
                    f"{self.bundle.path / 'labels.json'}: field 'heads[{i}].kind' says "
                    f"{head.kind!r} but the model's {head.output_name!r} is "
                    f"{'a softmax (single-label)' if softmax else 'sigmoids (multi-label)'}")

    def with_threads(self, threads: int, spin: bool = False) -> Predictor:
        """The same predictor on its own ONNX Runtime session with ``threads`` threads, which
        spin within a call if ``spin`` (a server runs a request that has the machine to itself
        on every core, the rest on one each). The Keras backend has no per-session threads:
        itself."""
        if not isinstance(self.runner, OnnxRunner) or (
                self.runner.threads == threads and self.runner.spin == spin):
            return self
        twin = copy.copy(self)
        twin.runner = self.runner.with_threads(threads, spin)
        return twin

    @property
    def backend(self) -> str:
        return self.runner.name

    def decode(self, source: str | Path | bytes) -> np.ndarray:
        p = self.bundle.preprocessing
        return decode_image(source, p.size, self.max_pixels, p.background)

    def predict_probabilities(self, images: np.ndarray, calibrated: bool = True
                              ) -> list[np.ndarray]:
        """uint8 images (n, size, size, 3) -> probabilities, one array per head.

        ``calibrated`` applies the bundle's temperatures (if the predictor was made with them).
        """
        return self.predict_outputs(images, calibrated)[0]

    def predict_outputs(self, images: np.ndarray, calibrated: bool = True
                        ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Probabilities per head, and the features of each head whose rule reads them."""
        width = len(self.heads) + len(self.embedded)
        chunks: list[list[np.ndarray]] = [[] for _ in range(width)]
        scale = np.float32(self.bundle.preprocessing.scale)
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size].astype(np.float32) * scale
            for chunk, out in zip(chunks, self.runner(batch)):
                chunk.append(np.asarray(out, dtype=np.float32))
        probs = [np.concatenate(c) if c else np.zeros((0, len(h.classes)), np.float32)
                 for c, h in zip(chunks, self.heads)]
        embeddings = {name: np.concatenate(c) if c else np.zeros((0, 1), np.float32)
                      for name, c in zip(self.embedded, chunks[len(self.heads):])}
        return (self.calibrate(probs) if calibrated else probs), embeddings

    def out_of_set(self, probs: list[np.ndarray], embeddings: dict[str, np.ndarray]
                   ) -> dict[str, OutOfSet]:
        """Per head with a rule, for each image: its score, whether it is unknown, and the
        score as a share of the correct validation answers."""
        verdicts = {}
        for head, p in zip(self.heads, probs):
            rule = self.rules.get(head.name)
            if rule is not None and len(p):
                scores = rule.scores(p, embeddings.get(head.name))
                verdicts[head.name] = OutOfSet(scores, scores > rule.threshold,
                                               rule.share(scores))
        return verdicts

    def calibrate(self, probs: list[np.ndarray]) -> list[np.ndarray]:
        """Apply each head's temperature (fitted on validation) to raw probabilities."""
        return [apply_temperature(p, self.temperatures.get(h.name, 1.0), h.multi)
                for p, h in zip(probs, self.heads)]

    def predict_arrays(self, images: np.ndarray, sources: Sequence[str] | None = None
                       ) -> list[Prediction]:
        probs, embeddings = self.predict_outputs(images)
        sources = sources or [f"image {i}" for i in range(len(images))]
        for head, p in zip(self.heads, probs):
            if p.shape != (len(images), len(head.classes)):
                raise FashionNetError(f"{self.bundle.path}: head {head.name!r} answered shape "
                                      f"{p.shape}, expected {(len(images), len(head.classes))}")
        finite = np.ones(len(images), bool)
        for p in [*probs, *embeddings.values()]:
            finite &= np.isfinite(p).all(axis=1)
        verdicts = self.out_of_set(probs, embeddings)

        def answer(head: HeadSpec, p: np.ndarray, i: int) -> HeadPrediction:
            verdict = verdicts.get(head.name)
            if verdict is None:
                return head_prediction(head, p[i])
            return head_prediction(head, p[i], bool(verdict.unknown[i]), verdict.share[i])

        return [Prediction(src, {h.name: answer(h, p, i)
                                 for h, p in zip(self.heads, probs)}) if finite[i]
                else Prediction(src, error=f"{src}: the model answered NaN or infinity; "
                                           "no prediction")
                for i, src in enumerate(sources)]

    def predict_files(self, paths: Sequence[str | Path], strict: bool = False,
                      progress: bool = False, workers: int | None = None) -> list[Prediction]:
        """One Prediction per path, in order; unreadable files get ``error`` (or raise if strict).

        Decoding overlaps inference: ``workers`` threads (default: one per core; Pillow lets go
        of the GIL while it decodes and resizes) keep up to two batches decoded ahead while the
        model runs the current one, so neither waits for the other.
        """
        paths = list(paths)
        results: list[Prediction] = []

        def decode(path):
            try:
                return self.decode(path)
            except ImageDecodeError as exc:
                if strict:
                    raise
                return str(exc)

        window = 2 * self.batch_size
        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=max(1, workers or cores())) as pool:
            queued = 0

            def top_up(limit: int) -> None:
                nonlocal queued
                while queued < len(paths) and len(pending) < limit:
                    pending.append(pool.submit(decode, paths[queued]))
                    queued += 1

            try:
                for chunk in _chunks(paths, self.batch_size, progress):
                    top_up(window)
                    decoded = [pending.popleft().result() for _ in chunk]
                    top_up(window)  # the next batches decode while the model runs this one
                    images = [d for d in decoded if not isinstance(d, str)]
                    ok = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                    errors = {i: d for i, d in enumerate(decoded) if isinstance(d, str)}
                    predicted = (self.predict_arrays(np.stack(images),
                                                     [str(chunk[i]) for i in ok])
                                 if images else [])
                    by_index = dict(zip(ok, predicted))
                    results.extend(by_index.get(i) or Prediction(str(p), error=errors[i])
                                   for i, p in enumerate(chunk))
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
        return results


def _no_keras(bundle: Bundle, backend: str, exc: ImportError) -> str:
    """Why the Keras model cannot run, and the one fix that applies."""
    lacking = getattr(exc, "name", None) or "Keras"
    if backend == "keras":
        return (f"--backend keras needs {lacking}, which is not installed: "
                f'pip install "fashionnet[train]" (or use --backend onnx)')
    if bundle.onnx_path.is_file():  # auto, with model.onnx there: onnxruntime is what lacks
        return (f"{bundle.path}: has model.onnx but onnxruntime is not installed (and "
                f'{lacking} is not either): pip install "fashionnet[runtime]"')
    return (f"{bundle.path}: has no model.onnx and {lacking} is not installed: "
            f'pip install "fashionnet[train]", or run `fashionnet export {bundle.path}` where '
            f"it is")


def _chunks(items: list, size: int, progress: bool) -> Iterator[list]:
    bar = None
    if progress and len(items) > size:
        from tqdm import tqdm
        bar = tqdm(total=len(items), desc="classifying", unit="img", leave=False, disable=None)
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield chunk
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()


def load(path: str | Path, backend: str = "auto", calibrated: bool = True,
         threads: int | None = None, precision: str = "auto", spin: bool = False,
         abstain: bool = True) -> Predictor:
    """Load a bundle folder into a `Predictor` (``threads``: ONNX Runtime's, default all cores;
    ``precision``: fp32 model.onnx or int8 model.int8.onnx; ``spin``: see
    `fashionnet.runtime.runners.session_options`; ``abstain``: answer ``unknown`` by the
    bundle's out-of-set rules)."""
    predictor = Predictor(load_bundle(path), backend=backend, calibrated=calibrated,
                          threads=threads, precision=precision, spin=spin, abstain=abstain)
    predictor.check_head_kinds()
    return predictor


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded (recursively) to the image files inside, sorted."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found, _ = image_files(item)
            if not found:
                raise FashionNetError(f"{item}: no image files in this folder")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise FashionNetError(f"{item}: no such file or folder")
    return paths


def _present(path: Path) -> bool:
    """There, whatever it is: a FIFO or a device named model.onnx is refused by the runner as
    "not a regular file", not reported as missing."""
    return path.exists() or path.is_symlink()
