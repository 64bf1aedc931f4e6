"""Export a bundle's Keras model to ONNX (for the light runtime) or a TensorFlow SavedModel.

The ONNX graph's outputs are renamed after the heads (``<head>_output``, in the bundle's
order) and ``labels.json`` is embedded as metadata, so the file alone says what it predicts.
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

FORMATS = ("onnx", "savedmodel")
PARITY_TOLERANCE = 1e-4


def export(bundle_dir: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    formats = list(formats or ["onnx"])
    bad = set(formats) - set(FORMATS)
    if bad:
        raise FashionNetError(f"unknown export format(s) {sorted(bad)}; choose from {FORMATS}")
    bundle = load_bundle(bundle_dir)
    from fashionnet.runtime.runners import KerasRunner

    runner = KerasRunner(bundle.keras_path, [h.output_name for h in bundle.heads])
    size = bundle.preprocessing.size
    probe = np.random.default_rng(0).random((8, size, size, 3), dtype=np.float32)
    expected = runner(probe)  # also the one call Keras needs before it can export
    written = []
    if "onnx" in formats:
        written.append(_export_onnx(bundle, runner.model, probe, expected))
    if "savedmodel" in formats:
        written.append(_export_savedmodel(bundle, runner.model))
    return written


def _export_onnx(bundle, model, probe: np.ndarray, expected: list[np.ndarray]) -> Path:
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
    # Map each ONNX output to the head whose Keras output it reproduces.
    renames = {}
    for head, want in zip(bundle.heads, expected):
        errors = [np.abs(g - want).max() if g.shape == want.shape else np.inf for g in got]
        best = int(np.argmin(errors))
        if errors[best] > PARITY_TOLERANCE or names[best] in renames:
            raise FashionNetError(f"{bundle.path}: ONNX output for {head.name!r} differs from "
                                  f"Keras by {errors[best]:.2g}; export aborted")
        renames[names[best]] = head.output_name
    _rename_outputs(graph, renames)
    order = [h.output_name for h in bundle.heads]
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


def onnx_labels(path: str | Path) -> dict:
    """The labels document embedded in an exported model."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    for entry in graph.metadata_props:
        if entry.key == "fashionnet.labels":
            return json.loads(entry.value)
    raise FashionNetError(f"{path}: no fashionnet labels in its metadata")
