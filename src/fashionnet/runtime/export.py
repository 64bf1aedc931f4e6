"""Export a bundle's Keras model to ONNX (for the light runtime) or a TensorFlow SavedModel.

The ONNX graph's outputs are renamed after the heads (``<head>_output``, in the bundle's
order), then the features the out-of-set rules read (``<head>_embedding``); ``labels.json`` is
embedded as metadata, so the file alone says what it predicts.
Every export is checked against Keras on random inputs before it is written into the bundle.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fashionnet.bundle import ONNX_FILE, load_bundle, update_bundle_file
from fashionnet.errors import FashionNetError
from fashionnet.open_set import embedding_name

FORMATS = ("onnx", "savedmodel")
PARITY_TOLERANCE = 1e-4


#: The largest difference between the ONNX and the Keras outputs on the probe images, per
#: head, of the last `export` (what the CLI prints as its parity figure).
LAST_PARITY: dict[str, float] = {}


def export(bundle_dir: str | Path, formats: Sequence[str] | None = None,
           overwrite: bool = False) -> list[Path]:
    """Export a bundle's model into the bundle (``model.onnx``, ``savedmodel/``); an existing
    export is kept unless ``overwrite``, like every other command's output."""
    formats = list(formats or ["onnx"])
    bad = set(formats) - set(FORMATS)
    if bad:
        raise FashionNetError(f"unknown export format(s) {sorted(bad)}; choose from {FORMATS}")
    bundle = load_bundle(bundle_dir)
    targets = {"onnx": bundle.onnx_path, "savedmodel": bundle.path / "savedmodel"}
    existing = [str(targets[f]) for f in formats if targets[f].exists()]
    if existing and not overwrite:
        raise FashionNetError(f"{', '.join(existing)}: already exported; pass --overwrite to "
                              f"replace it")
    from fashionnet.runtime.runners import KerasRunner

    names = [h.output_name for h in bundle.heads] + [
        embedding_name(name) for name, rule in bundle.open_set.items()
        if rule.score == "embedding"]
    runner = KerasRunner(bundle.keras_path, names)
    size = bundle.preprocessing.size
    probe = np.random.default_rng(0).random((8, size, size, 3), dtype=np.float32)
    expected = runner(probe)  # also the one call Keras needs before it can export
    written = []
    if "onnx" in formats:
        written.append(_export_onnx(bundle, runner.model, probe, dict(zip(names, expected))))
    if "savedmodel" in formats:
        written.append(_export_savedmodel(bundle, runner.model))
    return written


def _export_onnx(bundle, model, probe: np.ndarray, expected: dict[str, np.ndarray]) -> Path:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise FashionNetError("ONNX export needs the export extra: pip install "
                              "'fashionnet[export]'") from None
    raw = bundle.path / f".model.raw.tmp-{os.getpid()}.onnx"
    try:
        model.export(str(raw), format="onnx", verbose=False)
        graph = onnx.load(str(raw))
    finally:
        raw.unlink(missing_ok=True)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: probe})
    names = [o.name for o in graph.graph.output]
    # Map each ONNX output to the Keras output it reproduces.
    renames = {}
    for output, want in expected.items():
        errors = [np.abs(g - want).max() if g.shape == want.shape else np.inf for g in got]
        best = int(np.argmin(errors))
        if errors[best] > PARITY_TOLERANCE * max(1.0, float(np.abs(want).max())) \
                or names[best] in renames:
            raise FashionNetError(f"{bundle.path}: ONNX output {output!r} differs from "
                                  f"Keras by {errors[best]:.2g}; export aborted")
        renames[names[best]] = output
        LAST_PARITY[output.removesuffix("_output")] = float(errors[best])
    _rename_outputs(graph, renames)
    order = list(expected)
    graph.graph.output.sort(key=lambda o: order.index(o.name))
    graph.graph.input[0].name = _rename_value(graph, graph.graph.input[0].name, "image")
    del graph.metadata_props[:]
    entry = graph.metadata_props.add()
    entry.key, entry.value = "fashionnet.labels", json.dumps(bundle.labels_document())
    onnx.checker.check_model(graph)
    return update_bundle_file(bundle.path, ONNX_FILE, lambda p: onnx.save(graph, str(p)))


def _rename_value(graph, old: str, new: str) -> str:
    if old == new:
        return new
    for node in graph.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    return new


def _rename_outputs(graph, renames: dict[str, str]) -> None:
    for node in graph.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for out in graph.graph.output:
        out.name = renames.get(out.name, out.name)


def _export_savedmodel(bundle, model) -> Path:
    target = bundle.path / "savedmodel"
    tmp = bundle.path / f".savedmodel.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.export(str(tmp), format="tf_saved_model", verbose=False)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


#: images used to calibrate the int8 model's activation ranges, spread over the dataset
CALIBRATION_IMAGES = 200
#: the ops quantized: the convolutions and matrix products, where the time goes. Everything
#: else stays float32, the softmax and sigmoid outputs above all (quantized to 8 bits, a
#: softmax's rows no longer sum to 1, and probabilities lose their precision).
INT8_OPS = ["Conv", "MatMul", "Gemm"]


def export_int8(bundle_dir: str | Path, calibration: str | Path | Sequence[Path] | None = None,
                limit: int = CALIBRATION_IMAGES) -> Path:
    """Quantize the bundle's model.onnx to int8 and write it as model.int8.onnx.

    Static quantization (ONNX Runtime's ``quantize_static``, QDQ format) of the convolutions
    and matrix products (`INT8_OPS`): int8 weights per output channel and uint8 activations
    whose ranges are calibrated on ``limit`` images, so that ONNX Runtime runs them as integer
    kernels (VNNI where the CPU has it). Dynamic quantization was tried first: it re-measures
    every activation's range at run time and its integer convolutions were slower than
    float32 here.

    ``calibration``: a folder of images, or a list of files; default: the bundle's training
    split (split.json) when its dataset is found, else the dataset of its config.json. The
    result is checked against model.onnx on the calibration images; the labels metadata is
    carried over. Load it with ``precision="int8"`` (`fashionnet ... --int8`).
    """
    try:
        import onnx
        from onnxruntime import quantization as q
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise FashionNetError("int8 export needs onnx and onnxruntime: pip install "
                              "'fashionnet[export]'") from None
    from fashionnet.inference import INT8_FILE, Predictor

    bundle = load_bundle(bundle_dir)
    if not bundle.onnx_path.is_file():
        raise FashionNetError(f"{bundle.onnx_path}: missing; run `fashionnet export "
                              f"{bundle.path}` first")
    paths = _calibration_paths(bundle, calibration, limit)
    # the float32 model's decoding and input name; never an older model.int8.onnx beside it
    predictor = Predictor(bundle, backend="onnx", calibrated=False, precision="fp32",
                          abstain=False)
    images = []
    for path in paths:
        try:
            images.append(predictor.decode(path))
        except Exception:  # noqa: BLE001 - an unreadable file is skipped, not fatal
            continue
    if len(images) < 10:
        raise FashionNetError(f"int8 calibration needs at least 10 readable images, found "
                              f"{len(images)}; pass --calibration FOLDER")
    scale = np.float32(bundle.preprocessing.scale)
    batch = np.stack(images).astype(np.float32) * scale
    input_name = predictor.runner.input

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self._rows = iter(range(0, len(batch), 16))

        def get_next(self):
            start = next(self._rows, None)
            return None if start is None else {input_name: batch[start:start + 16]}

    pre = bundle.path / f".model.pre.tmp-{os.getpid()}.onnx"
    out = bundle.path / f".model.int8.tmp-{os.getpid()}.onnx"
    try:
        quant_pre_process(str(bundle.onnx_path), str(pre), skip_symbolic_shape=True)
        q.quantize_static(str(pre), str(out), Reader(), quant_format=q.QuantFormat.QDQ,
                          per_channel=True, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, op_types_to_quantize=INT8_OPS)
        graph = onnx.load(str(out))
    finally:
        pre.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    source = onnx.load(str(bundle.onnx_path), load_external_data=False)
    del graph.metadata_props[:]
    for entry in source.metadata_props:
        graph.metadata_props.add().CopyFrom(entry)
    onnx.checker.check_model(graph)
    _check_int8(graph, predictor, batch, bundle)
    return update_bundle_file(bundle.path, INT8_FILE, lambda p: onnx.save(graph, str(p)))


def _check_int8(graph, predictor, batch: np.ndarray, bundle) -> None:
    """The int8 model must answer the same top label as float32 on most calibration images."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    want = predictor.runner(batch)
    got = session.run(predictor.runner.outputs, {predictor.runner.input: batch})
    for head, a, b in zip(bundle.heads, want, got):
        agree = float(np.mean(a.argmax(1) == b.argmax(1))) if not head.multi else float(
            np.mean((a >= head.threshold) == (b >= head.threshold)))
        if not np.isfinite(b).all() or agree < 0.9:
            raise FashionNetError(f"{bundle.path}: the int8 model agrees with float32 on only "
                                  f"{agree:.0%} of the calibration images for head "
                                  f"{head.name!r}; not written")


def _calibration_paths(bundle, calibration, limit: int) -> list[Path]:
    from fashionnet.bundle import read_split
    from fashionnet.data.sources import dataset_root, image_files

    if calibration is not None and not isinstance(calibration, (str, Path)):
        found = [Path(p) for p in calibration]
    elif calibration is not None:
        if not Path(calibration).is_dir():
            raise FashionNetError(f"{calibration}: not a folder of calibration images")
        found, _ = image_files(Path(calibration))
    else:
        config = bundle.path / "config.json"
        dataset = json.loads(config.read_text()).get("dataset") if config.is_file() else None
        if not dataset or not Path(dataset).exists():
            raise FashionNetError(f"{bundle.path}: its training dataset ({dataset}) is not "
                                  f"here to calibrate the int8 model on; pass --calibration "
                                  f"FOLDER (a few hundred images like the ones it will see)")
        root = dataset_root(dataset)
        split = read_split(bundle.path) or {}
        if "paths" in split and split.get("train"):
            found = [root / key for key in split["train"]]
        else:
            found, _ = image_files(root)
    found = sorted(found)
    if len(found) > limit:  # evenly spread: every class folder is represented
        found = [found[int(i * len(found) / limit)] for i in range(limit)]
    return found


def onnx_labels(path: str | Path) -> dict:
    """The labels document embedded in an exported model."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    for entry in graph.metadata_props:
        if entry.key == "fashionnet.labels":
            return json.loads(entry.value)
    raise FashionNetError(f"{path}: no fashionnet labels in its metadata")
