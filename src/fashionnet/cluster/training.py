"""Data-parallel training on Ray Train: the same `fashionnet.training.train`, on N workers.

Ray Train's `TensorflowTrainer` starts N worker processes and sets ``TF_CONFIG`` on each;
every worker creates a `tf.distribute.MultiWorkerMirroredStrategy` and runs the ordinary
`train()` inside its scope. The model is built in the scope, so its variables are mirrored;
``model.fit`` splits each global batch (``--batch-size``, as in a one-process run) between the
workers and all-reduces the gradients: the same config, split, schedule and bundle as
``fashionnet train``, only the arithmetic of a step is shared.

Only the chief (rank 0) writes the bundle, with `train`'s own atomic writer; the others write
theirs to a scratch folder that is then deleted (every worker runs the same code, as
MultiWorkerMirroredStrategy expects). After each epoch the chief checkpoints the model and
optimizer weights, the best-epoch state and the history (NumPy ``.npz`` read without pickle,
and JSON) through ``ray.train.report``; when a worker dies, Ray Train restarts the group
(``max_failures``) and `train` resumes from the last checkpoint instead of epoch 1.

With ``KERAS_BACKEND=jax`` the equivalent would be Ray Train's ``JaxTrainer`` (it calls
``jax.distributed.initialize`` on each worker) and Keras's ``keras.distribution.DataParallel``
in place of the TensorFlow strategy; only the TensorFlow path is implemented and tested here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras

from fashionnet.bundle import Bundle, load_bundle, recover, update_bundle_file
from fashionnet.checkpoints import restore, save
from fashionnet.config import TrainConfig
from fashionnet.errors import FashionNetError
from fashionnet.extras import require_cluster, require_training
from fashionnet.outputs import check_destination, check_output, dataset_inputs

log = logging.getLogger("fashionnet")

#: Called on every worker after each epoch's checkpoint: (epoch index, world rank). For
#: monitoring, and for the test that kills a worker mid-run.
EpochHook = Callable[[int, int], None]


@dataclasses.dataclass
class ClusterTrainResult:
    bundle: Bundle
    metrics: dict
    #: what `cluster.json` in the bundle says: workers, restarts, wall time
    cluster: dict


def train_on_ray(config: TrainConfig, output: str | Path, *, workers: int = 2,
                 address: str | None = None, overwrite: bool = False, max_failures: int = 3,
                 storage: str | None = None, cpus_per_worker: float | None = None,
                 verbose: bool = True, epoch_hook: EpochHook | None = None
                 ) -> ClusterTrainResult:
    """Train ``config`` on ``workers`` Ray workers and write the bundle at ``output``.

    ``address``: an existing Ray cluster (else Ray starts here). ``storage``: where Ray Train
    keeps the per-epoch checkpoints (default: a hidden folder beside ``output``; on a cluster,
    a path every node shares, or ``s3://...``), deleted after success. ``max_failures``: how
    many times a run that lost a worker is restarted from its last checkpoint.
    ``cpus_per_worker``: Ray CPUs each worker reserves (and sizes its thread pools to); default
    this machine's cores shared out between the workers, or 1 on a cluster (``address``).
    """
    require_cluster("fashionnet train --workers")
    require_training("fashionnet train --workers")
    if workers < 1:
        raise FashionNetError(f"--workers must be at least 1, not {workers}")
    if not config.dataset or not Path(config.dataset).exists():
        raise FashionNetError(f"{config.dataset}: dataset not found (expected a folder or a "
                              f"manifest)")
    output = Path(output).resolve()  # the workers' working folder is not ours
    recover(output)
    check_destination(output, dataset_inputs(config.dataset, config.path_column),
                      overwrite=overwrite)
    own_storage = not storage  # our hidden folder: ours to delete whole after success
    if not storage:
        storage = str(output.parent / f".{output.name}.ray")
    elif "://" not in storage:
        # Ray (Arrow) wants an absolute local path; the user's folder is kept, only this run's
        # sub-folder is removed after success.
        storage = str(Path(storage).expanduser().resolve())
        if Path(storage).exists() and not Path(storage).is_dir():
            raise FashionNetError(f"--storage {storage}: is a file, not a folder")
        check_output(storage, dataset_inputs(config.dataset, config.path_column),
                     flag="--storage")
    run_name = f"fashionnet-{output.name}"
    run_storage = Path(storage) / run_name if "://" not in storage else None
    fresh_run = run_storage is not None and not run_storage.exists()

    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from fashionnet.cluster import connect

    started = time.perf_counter()
    connect(address, num_cpus=None if address else max(os.cpu_count() or 1, workers))
    params = {"config": config, "output": str(output), "overwrite": overwrite, "cwd": os.getcwd(),
              "verbose": verbose, "epoch_hook": epoch_hook}
    trainer = TensorflowTrainer(
        _worker, train_loop_config=params,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=False,
            resources_per_worker={"CPU": cpus_per_worker or (
                1 if address else max(1, (os.cpu_count() or 1) // workers))}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    try:
        result = trainer.fit()
    except Exception as exc:  # TrainingFailedError wraps the worker's traceback
        text = " ".join(str(exc).split())
        raise FashionNetError(f"distributed training failed ({type(exc).__name__}: "
                              f"{text[:400]})") from None
    bundle = load_bundle(output)
    last = result.metrics or {}
    cluster = {"engine": "ray", "workers": workers, "address": address or "local",
               "strategy": "tf.distribute.MultiWorkerMirroredStrategy",
               "resumed_from_epoch": int(last.get("resumed_from", 0)) or None,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    update_bundle_file(output, "cluster.json",
                       lambda path: path.write_text(json.dumps(cluster, indent=2) + "\n"))
    if own_storage:
        shutil.rmtree(storage, ignore_errors=True)
    elif fresh_run:  # only what this run created inside the user's --storage
        shutil.rmtree(run_storage, ignore_errors=True)
    return ClusterTrainResult(bundle, bundle.metrics, cluster)


def _worker(params: dict) -> None:
    """Ray Train's loop on each worker: the strategy first (before any TensorFlow op), then
    the ordinary `train` in its scope."""
    # Ray's TensorFlow backend asks for tf.keras 2 (tf_keras); FashionNet is Keras 3.
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    from fashionnet.extras import import_keras_quietly

    import_keras_quietly()  # TensorFlow's C++ start-up lines, once per worker, are noise
    import tensorflow as tf

    # "Using MirroredStrategy...", "Collective all_reduce tensors..." on every step: INFO.
    tf.get_logger().setLevel(logging.WARNING)

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import ray.train

    from fashionnet.training import train

    if os.path.isdir(params["cwd"]):  # relative dataset paths mean what they meant to the driver
        os.chdir(params["cwd"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    chief = rank == 0
    # Ray Train's own per-report lines would bury the epoch lines.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    if chief and params["verbose"]:  # the epoch lines, once: Ray forwards them to the driver
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    elif not chief:  # the other workers' "found N images" would repeat the chief's
        log.setLevel(logging.WARNING)
    # Ray Train v2 reports each epoch ("Reporting training result ...") at INFO, per worker,
    # through a logger named after its source file.
    names = ["ray.train", "ray.train.v2"]
    with contextlib.suppress(ImportError, AttributeError):
        from ray.train.v2._internal.execution import context as train_context

        names.append(train_context.__file__)
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    scratch = None if chief else tempfile.mkdtemp(prefix="fashionnet-worker-")
    output = Path(params["output"]) if chief else Path(scratch) / "bundle"
    checkpoints = _Checkpoints(rank, context.get_world_size(), params["epoch_hook"])
    try:
        with strategy.scope():
            train(params["config"], output, overwrite=params["overwrite"],
                  verbose="auto" if chief and params["verbose"] else 0,
                  fit_hook=checkpoints.fit_hook)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


class _Checkpoints:
    """`train`'s fit hook: resume from Ray Train's last checkpoint, checkpoint every epoch."""

    def __init__(self, rank: int, workers: int, epoch_hook: EpochHook | None):
        self.rank, self.workers, self.epoch_hook = rank, workers, epoch_hook

    def fit_hook(self, model, best) -> tuple[int, list]:
        import ray.train

        history = keras.callbacks.History()
        first = 0
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                first, history.history = restore(model, best, Path(folder))
            log.info("resuming from the checkpoint after epoch %d", first)
        model.history = history  # what fit returns, even with no epoch left to run
        if self.workers > 1:
            _multi_worker_fixes(model)
        return first, [history, _Report(self.rank, best, history, first, self.epoch_hook)]


def _multi_worker_fixes(model) -> None:
    """Work around two bugs of Keras 3 (3.15) under MultiWorkerMirroredStrategy with more than
    one worker (tensorflow/tensorflow#72388), on this model only.

    1. Before its first step, ``fit`` builds the metrics from one batch, which it first
       averages over the workers with ``strategy.reduce``; that fails on a batch that is a
       structure (images, {head: targets}): "Attempt to convert a value (PerReplica...) to a
       Tensor". Shapes are all the build needs, and this worker's part of the batch has them.
    2. Each step's logs are averaged over the workers with ``reduce("MEAN", value, axis=0)``,
       which fails on scalars ("Invalid reduction dimension 0 for input with 0 dimensions").
       The steps here return each scalar as a vector of one, which that reduce averages into
       a scalar again: the logs are the mean over the workers, as intended.
    """
    import tensorflow as tf

    strategy = model._distribute_strategy

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def vectors(step):
        def wrapped(data):
            return tf.nest.map_structure(
                lambda t: tf.reshape(t, [1]) if t.shape.rank == 0 else t, step(data))
        return wrapped

    model._maybe_symbolic_build = build
    model.train_step = vectors(model.train_step)
    model.test_step = vectors(model.test_step)


class _Report(keras.callbacks.Callback):
    """After each epoch: the chief saves a checkpoint; every worker calls ray.train.report (a
    barrier: all workers must call it as often)."""

    def __init__(self, rank: int, best, history, first: int, epoch_hook: EpochHook | None):
        super().__init__()
        self.rank, self.best, self.history, self.first = rank, best, history, first
        self.epoch_hook = epoch_hook

    def on_epoch_end(self, epoch, logs=None):
        import ray.train

        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics.update(epoch=epoch + 1, resumed_from=self.first)
        if self.rank == 0:
            with tempfile.TemporaryDirectory(prefix="fashionnet-ckpt-") as folder:
                save(self.model, self.best, self.history.history, epoch + 1, Path(folder))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        if self.epoch_hook is not None:
            self.epoch_hook(epoch, self.rank)
