"""Experiment tracking: TensorBoard logs for every run, MLflow when asked (``--track mlflow``).

TensorBoard needs nothing new (TensorFlow writes the event files): per epoch, the loss and
every head's accuracy on training and validation, validation exact match and the learning
rate; at the end, each head's test confusion matrix as an image. While a run trains, the logs
are in its work folder (``runs/.NAME.run/tensorboard``); the bundle carries them afterwards
(``runs/NAME/tensorboard``), so ``tensorboard --logdir runs`` compares runs.

MLflow (the ``track`` extra) logs the configuration as parameters, the same metrics per epoch,
the test figures, and the bundle as an artifact; the tracking URI defaults to a local file
store (``./mlruns``), which needs no server or database (MLflow 3 keeps it in maintenance mode;
pass ``--tracking-uri`` for a server or ``sqlite:///mlflow.db`` with the full mlflow package).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import keras
import numpy as np

from fashionnet.errors import FashionNetError
from fashionnet.extras import require

log = logging.getLogger("fashionnet")

TRACKERS = ("mlflow",)


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    """Scalars once per epoch (no graph, no profiler: they cost time and disk for nothing)."""
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False,
                                       profile_batch=0, update_freq="epoch")


def write_confusion_images(log_dir: Path, matrices: dict[str, tuple[np.ndarray, list[str]]],
                           step: int) -> None:
    """Each head's confusion matrix (the plot the bundle has) as a TensorBoard image."""
    import tensorflow as tf

    from fashionnet.plots import plot_confusion

    writer = tf.summary.create_file_writer(str(log_dir / "test"))
    with writer.as_default():
        for name, (matrix, classes) in matrices.items():
            buffer = io.BytesIO()
            plot_confusion(matrix, classes, name, buffer)
            image = tf.io.decode_png(buffer.getvalue(), channels=4)
            tf.summary.image(f"confusion/{name}", image[None], step=step)
    writer.flush()
    writer.close()


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested configuration as MLflow parameters: ``heads.0.name`` = ``color``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                out.update(flat_params(item, f"{name}.{i}."))
        else:
            out[name] = str(value)[:500]
    return out


class MlflowTracker(keras.callbacks.Callback):
    """Logs one MLflow run: parameters at the start, metrics each epoch, the rest at `finish`."""

    def __init__(self, uri: str | None, experiment: str, run_name: str, params: dict):
        super().__init__()
        require("--track mlflow", "track", "mlflow")
        import mlflow

        self.mlflow = mlflow
        if uri:
            mlflow.set_tracking_uri(uri)
        if mlflow.get_tracking_uri().startswith(("file:", "/", ".")) or "://" not in \
                mlflow.get_tracking_uri():
            # A local file store needs no server and no database driver (the skinny client
            # has none); MLflow 3 asks for this opt-in to use one.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            mlflow.set_experiment(experiment)
            self.run = mlflow.start_run(run_name=run_name)
        except Exception as exc:  # an unreachable server, a bad URI: one line
            raise FashionNetError(f"--track mlflow: cannot start a run at "
                                  f"{mlflow.get_tracking_uri()} ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]})") from None
        mlflow.log_params(flat_params(params))

    def on_epoch_end(self, epoch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items()
                  if np.isscalar(v) and np.isfinite(float(v))}
        if values:
            self.mlflow.log_metrics(values, step=epoch + 1)

    def finish(self, metrics: dict, bundle: Path | None, failed: bool = False) -> None:
        """Test figures, the bundle as an artifact, and the run closed."""
        try:
            if not failed:
                test = metrics.get("test") or {}
                final = {f"test_{h}_accuracy": v["accuracy"]
                         for h, v in (test.get("heads") or {}).items()}
                if test.get("count"):
                    final["test_exact_match"] = test["exact_match"]
                self.mlflow.log_metrics({k: float(v) for k, v in final.items()
                                         if v is not None and np.isfinite(v)})
                if bundle is not None:
                    self.mlflow.log_artifacts(str(bundle), artifact_path="bundle")
        finally:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


def mlflow_tracker(track: str | None, uri: str | None, experiment: str, run_name: str,
                   params: dict) -> MlflowTracker | None:
    if track is None:
        return None
    if track not in TRACKERS:
        raise FashionNetError(f"--track must be one of {', '.join(TRACKERS)}, not {track!r}")
    return MlflowTracker(uri, experiment, run_name, params)


def _events(log_dir: Path):
    """(folder relative to ``log_dir``, event) for every event in its event files, read with
    TensorFlow's own record reader (what TensorBoard reads)."""
    import tensorflow as tf

    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        folder = path.parent.relative_to(log_dir).as_posix()
        for record in tf.data.TFRecordDataset(str(path)):
            yield folder, tf.compat.v1.Event.FromString(record.numpy())


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar under ``log_dir``: {"train/epoch_loss": [(step, value)]}."""
    import tensorflow as tf

    out: dict[str, list[tuple[int, float]]] = {}
    for folder, event in _events(log_dir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                number = value.simple_value
            elif value.HasField("tensor") and value.tensor.dtype == tf.float32.as_datatype_enum:
                number = float(tf.make_ndarray(value.tensor))
            else:
                continue
            out.setdefault(f"{folder}/{value.tag}", []).append((event.step, number))
    return out


def image_tags(log_dir: Path) -> list[str]:
    """The tags of every image under ``log_dir`` (the confusion matrices)."""
    return [v.tag for _, event in _events(log_dir) for v in event.summary.value
            if v.metadata.plugin_data.plugin_name == "images"]
