"""Batch labelling with Ray Data: a folder, manifest or list of paths in, Parquet shards out.

    paths ──from_items──► decode (Ray tasks, in parallel) ──► label (actor pool: one loaded
    model per actor, ONNX when the bundle has it) ──► write_parquet (one shard per block)

Decoding is the project's own (`decode_image` with the bundle's preprocessing, EXIF, draft
mode), not ``ray.data.read_images``: predictions match ``fashionnet classify`` exactly, and an
unreadable file becomes a row with an ``error`` instead of failing the job. The actors hold a
`Predictor`, which runs ``model.onnx`` through onnxruntime when the bundle has one, so the
workers never import TensorFlow.

Columns: ``path``, ``error`` (null when labelled), then per head ``HEAD`` (the label, null when
the head answers unknown, `fashionnet.open_set`; a multi-label head's labels joined with
``|``), ``HEAD_probability`` (its probability; for a
multi-label head the highest class probability) and one ``HEAD_prob_CLASS`` per class
(calibrated, as ``classify`` shows them). ``_summary.json`` beside the shards counts them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from fashionnet.bundle import Bundle, atomic_directory, load_bundle, write_json
from fashionnet.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from fashionnet.data.sources import image_list
from fashionnet.errors import FashionNetError
from fashionnet.extras import require_cluster
from fashionnet.outputs import check_destination

log = logging.getLogger("fashionnet")

#: Logical CPUs of one decoding task. Not the actors' figure on purpose: Ray Data fuses a task
#: stage into the next actor stage when their resources match, and decoding would then run
#: inside the model actors, one batch after the other, instead of beside them.
DECODE_CPUS = 0.5
#: Beside the shards. The leading underscore makes Arrow, pandas, Spark and DuckDB skip it when
#: they read the folder as one Parquet dataset (as they skip Spark's ``_SUCCESS``).
SUMMARY = "_summary.json"


def _is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _local_path(uri: str) -> Path | None:
    """The local folder a ``file://`` URI names; None for remote storage. A URI Arrow cannot
    open (unknown scheme, malformed) is refused here, before the job."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
    except Exception as exc:  # ArrowInvalid, ValueError, ...
        raise FashionNetError(f"--output {uri}: not a folder or a storage URI Arrow can write "
                              f"to ({' '.join(str(exc).split())[:200]})") from None
    return Path(path) if isinstance(filesystem, fs.LocalFileSystem) else None


def _read_bytes(uri: str) -> bytes:
    """One object from any filesystem Arrow knows (s3://, gs://, abfs://, file://)."""
    from pyarrow import fs

    try:
        filesystem, inner = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(inner) as stream:
            return stream.read()
    except Exception as exc:  # Arrow's errors are OSError, ArrowInvalid, ...: this file's
        raise ImageDecodeError(f"{uri}: cannot open ({' '.join(str(exc).split())[:200]})") from None


def decode_batch(batch: dict[str, np.ndarray], size: int, background: tuple[int, int, int],
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """A Ray Data task: paths -> uint8 images (zeros where unreadable) + the error ("" if none:
    a string column stays a string column through Arrow, where None would become NaN)."""
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), size, size, 3), np.uint8)
    errors = np.full(len(paths), "", dtype=object)
    for i, path in enumerate(paths):
        try:
            if _is_uri(path):
                try:
                    images[i] = decode_image(_read_bytes(path), size, max_pixels, background)
                except ImageDecodeError as exc:  # bytes are named "upload": name the URI
                    raise ImageDecodeError(str(exc).replace("upload", path, 1)) from None
            else:
                images[i] = decode_image(path, size, max_pixels, background)
        except ImageDecodeError as exc:
            errors[i] = str(exc)
    return {"path": np.array(paths, dtype=object), "image": images, "error": errors}


def output_schema(bundle: Bundle):
    """The Parquet schema: fixed, so a shard of only unreadable files has the same columns."""
    import pyarrow as pa

    fields = [pa.field("path", pa.string()), pa.field("error", pa.string())]
    for head in bundle.heads:
        fields += [pa.field(head.name, pa.string()),
                   pa.field(f"{head.name}_probability", pa.float32())]
        fields += [pa.field(f"{head.name}_prob_{c}", pa.float32()) for c in head.classes]
    return pa.schema(fields)


class Labeller:
    """A Ray Data actor: loads the bundle once, then labels batches of decoded images."""

    def __init__(self, model: str, backend: str = "auto", batch_size: int = 64,
                 threads: int | None = 1):
        from fashionnet.inference import load

        self.predictor = load(model, backend=backend, threads=threads)
        self.predictor.batch_size = min(batch_size, self.predictor.batch_size)
        self.schema = output_schema(self.predictor.bundle)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa

        paths = [str(p) for p in batch["path"]]
        errors = [str(e) or None for e in batch["error"]]
        ok = [i for i, e in enumerate(errors) if e is None]
        columns: dict[str, list[Any]] = {name: [None] * len(paths) for name in self.schema.names}
        columns["path"] = paths
        predictions = (self.predictor.predict_arrays(batch["image"][ok], [paths[i] for i in ok])
                       if ok else [])
        for i, prediction in zip(ok, predictions):
            if prediction.error:
                errors[i] = prediction.error
                continue
            for name, head in prediction.heads.items():
                columns[name][i] = "|".join(head.label) if head.multi else head.label
                columns[f"{name}_probability"][i] = max(head.probabilities.values())
                for cls, p in head.probabilities.items():
                    columns[f"{name}_prob_{cls}"][i] = p
        columns["error"] = errors
        return pa.Table.from_pydict(columns, schema=self.schema)


#: How the summary counts a head's null (unknown) labels: not a name a class can clash with.
UNKNOWN = "(unknown)"


def summarise(output: str, bundle: Bundle) -> dict:
    """Counts read back from the written shards (only the label and error columns)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    heads = [h.name for h in bundle.heads]
    table = pads.dataset(output, format="parquet").to_table(columns=["error", *heads])
    labelled = table.filter(pc.is_null(table.column("error")))
    counts = {}
    for name in heads:
        values = labelled.column(name).value_counts().to_pylist()
        # a null label is the head's "unknown" (`fashionnet.open_set`)
        counts[name] = dict(sorted(((UNKNOWN if v["values"] is None else v["values"],
                                     v["counts"]) for v in values),
                                   key=lambda kv: (-kv[1], kv[0])))
    return {"rows": table.num_rows, "labelled": labelled.num_rows,
            "errors": table.num_rows - labelled.num_rows, "labels": counts}


def label(model: str | Path, source: str | Path, output: str | Path, *, workers: int = 1,
          address: str | None = None, batch_size: int = 64, backend: str = "auto",
          cpus_per_worker: float = 1.0, overwrite: bool = False,
          progress: bool = False) -> dict:
    """Label every image of ``source`` with the bundle ``model`` on Ray; write Parquet shards
    and ``_summary.json`` to ``output`` (a folder, written atomically; or a URI such as
    ``s3://bucket/labels/``). Returns the summary.

    ``workers``: model actors (each ``cpus_per_worker`` CPUs, one ONNX thread per CPU);
    decoding runs in Ray tasks beside them. ``address``: an existing cluster, else Ray starts
    on this machine.
    """
    require_cluster("fashionnet classify --engine ray")
    if workers < 1 or batch_size < 1:
        raise FashionNetError("--workers and --batch-size must be at least 1")
    bundle = load_bundle(model)  # a bad bundle fails here, in one line, before Ray starts
    if backend != "keras" and not bundle.onnx_path.is_file():
        log.warning("%s has no model.onnx: every Ray worker will import TensorFlow and run "
                    "the Keras model (`fashionnet export %s` avoids it)", bundle.path, bundle.path)
    paths = image_list(source)
    uri = _is_uri(output)
    # Before the job, not after: never an input, never a folder of the user's, a URI that
    # Arrow understands.
    inputs = [("input", source), ("model", bundle.path)]
    if not Path(source).is_dir():
        inputs += [("image", p) for p in paths if not _is_uri(p)]
    local = _local_path(str(output)) if uri else Path(output)
    if local is not None:  # a file:// URI is a local folder: written the same safe way
        output, uri = check_destination(local, inputs, overwrite=overwrite), False

    import ray

    from fashionnet.cluster import connect

    started = time.perf_counter()
    connect(address, num_cpus=None if address else _local_cpus(workers, cpus_per_worker))
    startup = time.perf_counter() - started
    _check_cpus(ray.cluster_resources().get("CPU", 0), workers, cpus_per_worker)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)

    preprocessing = bundle.preprocessing
    # At least two blocks per actor, so that every actor gets work; else one per batch.
    blocks = min(len(paths), max(2 * workers, math.ceil(len(paths) / batch_size)))
    dataset = (ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
               .map_batches(decode_batch, batch_size=batch_size, batch_format="numpy",
                            num_cpus=DECODE_CPUS if cpus_per_worker != DECODE_CPUS else 0.25,
                            fn_kwargs={"size": preprocessing.size,
                                       "background": tuple(preprocessing.background)})
               .map_batches(Labeller, batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=cpus_per_worker,
                            fn_constructor_kwargs={
                                "model": str(bundle.path.resolve()), "backend": backend,
                                "batch_size": batch_size,
                                "threads": max(1, int(cpus_per_worker))}))
    began = time.perf_counter()
    if uri:
        dataset.write_parquet(str(output))
        summary = _summary(bundle, source, str(output), paths, workers, address, began, startup)
        _write_uri_json(f"{str(output).rstrip('/')}/{SUMMARY}", summary)
    else:
        with atomic_directory(output, overwrite=overwrite, command="classify --engine ray") as tmp:
            dataset.write_parquet(str(tmp.resolve()))
            summary = _summary(bundle, source, str(tmp), paths, workers, address, began, startup)
            write_json(tmp / SUMMARY, summary)
    return summary


def _summary(bundle: Bundle, source, written: str, paths: list[str], workers: int,
             address: str | None, began: float, startup: float) -> dict:
    seconds = time.perf_counter() - began
    counts = summarise(written, bundle)
    if counts["rows"] != len(paths):  # every input gives exactly one row, or the job is wrong
        raise FashionNetError(f"{written}: {counts['rows']} rows written for {len(paths)} inputs")
    return {
        "model": str(bundle.path), "input": str(source), "engine": "ray",
        "address": address or "local", "workers": workers,
        "backend": "onnx" if bundle.onnx_path.is_file() else "keras",
        "images": len(paths), "labelled": counts["labelled"], "errors": counts["errors"],
        "seconds": round(seconds, 3), "ray_start_seconds": round(startup, 3),
        "images_per_second": round(len(paths) / max(seconds, 1e-9), 1),
        "heads": {h.name: {"classes": list(h.classes), "counts": counts["labels"][h.name]}
                  for h in bundle.heads},
        "columns": output_schema(bundle).names,
    }


def _write_uri_json(uri: str, data: dict) -> None:
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(uri)
    with filesystem.open_output_stream(inner) as stream:
        stream.write(json.dumps(data, indent=2).encode())


def _local_cpus(workers: int, cpus_per_worker: float) -> int:
    """CPUs to declare for a local Ray: the machine's, and at least one beside the actors, so
    that decoding tasks can run (logical CPUs; on a small machine they share the cores)."""
    import os

    return max(os.cpu_count() or 1, math.ceil(workers * cpus_per_worker + DECODE_CPUS))


def _check_cpus(available: float, workers: int, cpus_per_worker: float) -> None:
    needed = workers * cpus_per_worker + DECODE_CPUS
    if available < needed:
        raise FashionNetError(f"{workers} worker(s) of {cpus_per_worker:g} CPU need {needed:g} "
                              f"CPUs with decoding, but the Ray cluster has {available:g}; "
                              f"lower --workers")
