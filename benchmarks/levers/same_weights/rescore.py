"""Same weights, one inference-time change; every fold model of a finished study re-scored.

Each fold model is loaded, its split rebuilt from the study's config, and its held-out and
seen test images scored as `fashionnet study compositional` scored them, before and after:

- ``bn``: BatchNorm statistics re-estimated by precise BN once as training does (the category
  branch's training augmentations on: random backdrop, photometric and shape jitter) and once
  with those layers switched off, so that they describe plain images as inference sees them;
- ``views``: the category head's probabilities averaged over extra views the training jitter
  also makes (a 10 % zoom in or out, a 3-pixel diagonal shift either way), beyond the mirror
  image the model already averages over.

    python benchmarks/levers/same_weights/rescore.py bn runs/study_bd50_s42 \
        results/levers/bn_statistics/bd50_s42.json
    python benchmarks/levers/same_weights/rescore.py views runs/study_bd50_s42 \
        results/levers/tta_views/bd50_s42.json
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

from fashionnet.bundle import load_bundle
from fashionnet.config import TrainConfig
from fashionnet.evaluation import report_from_probabilities
from fashionnet.model import layers
from fashionnet.model.fashionnet import predict_probabilities
from fashionnet.training import load_dataset, precise_batchnorm, split_dataset

AUGMENTATIONS = (layers.RandomBackdrop, layers.RandomPhotometric, layers.RandomShapeJitter,
                 layers.RandomCutout, layers.RandomGarmentTone)


def resized(images, size):
    out = keras.ops.image.resize(images.astype(np.float32), size)
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


def zoom(images, f):
    """Centre crop (f < 1) or edge-padded (f > 1) to f of the side, resized back."""
    h, w = images.shape[1:3]
    if f < 1:
        ch, cw = int(round(h * f)), int(round(w * f))
        top, left = (h - ch) // 2, (w - cw) // 2
        return resized(images[:, top:top + ch, left:left + cw], (h, w))
    ph, pw = int(round(h * (f - 1) / 2)), int(round(w * (f - 1) / 2))
    return resized(np.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)), mode="edge"), (h, w))


def shift(images, dy, dx):
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="edge")
    return np.roll(padded, (dy, dx), axis=(1, 2))[:, 4:-4, 4:-4]


VIEWS = {"z90": lambda x: zoom(x, 0.9), "z110": lambda x: zoom(x, 1.1),
         "s+": lambda x: shift(x, 3, 3), "s-": lambda x: shift(x, -3, -3)}
VIEW_SETS = {"base": [], "z90": ["z90"], "z90+z110": ["z90", "z110"], "shifts": ["s+", "s-"],
             "all4": ["z90", "z110", "s+", "s-"]}


class Fold:
    """One fold model with its test images, and a scorer: (unseen, seen) exact match, %."""

    def __init__(self, study_dir: Path, combo: str, data, config: TrainConfig):
        self.combo, self.data = combo, data
        self.split = split_dataset(data, config.with_overrides(holdout=[combo]))
        self.bundle = load_bundle(study_dir / "folds" / combo)
        self.model = keras.saving.load_model(study_dir / "folds" / combo / "model.keras",
                                             safe_mode=True)
        self.test_images = data.images[self.split.test]

    def score(self, probs=None) -> tuple[float, float]:
        probs = probs if probs is not None else predict_probabilities(self.model,
                                                                      self.test_images)
        records = [self.data.records[i] for i in self.split.test]
        report = report_from_probabilities(self.data.heads, records, probs,
                                           self.bundle.trained_combinations)
        return (round(100 * report["combinations"][self.combo]["exact_match"], 2),
                round(100 * report["seen_exact_match"], 2))


def batchnorm_rows(fold: Fold, stored: dict, batch_size: int, seed: int) -> dict:
    row = {"stored": (round(100 * stored["unseen_exact_match"], 2),
                      round(100 * stored["seen_exact_match"], 2)),
           "loaded": fold.score()}
    train_images = fold.data.images[fold.split.train]
    precise_batchnorm(fold.model, train_images, batch_size, seed=seed)
    row["bn_aug_on"] = fold.score()
    for layer in fold.model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, AUGMENTATIONS):
            layer.call = lambda inputs, training=None: inputs
    precise_batchnorm(fold.model, train_images, batch_size, seed=seed)
    row["bn_aug_off"] = fold.score()
    return row


def view_rows(fold: Fold) -> dict:
    category = [h.name for h in fold.data.heads].index("category")
    base = predict_probabilities(fold.model, fold.test_images)
    views = {name: predict_probabilities(fold.model, make(fold.test_images))[category]
             for name, make in VIEWS.items()}
    row = {}
    for name, extra in VIEW_SETS.items():
        probs = list(base)
        probs[category] = (base[category] + sum(views[v] for v in extra)) / (1 + len(extra))
        row[name] = fold.score(probs)
    return row


def main(kind: str, study_dir: Path, output: Path) -> None:
    study = json.loads((study_dir / "study.json").read_text())
    config = TrainConfig.from_dict(study["config"])
    data = load_dataset(config, progress=False)
    rows = {}
    for combo, stored in study["folds"].items():
        fold = Fold(study_dir, combo, data, config)
        rows[combo] = (batchnorm_rows(fold, stored, config.batch_size, config.seed)
                       if kind == "bn" else view_rows(fold))
        print(combo, rows[combo], flush=True)
    for key in next(iter(rows.values())):
        unseen, seen = (np.mean([r[key][k] for r in rows.values()]) for k in (0, 1))
        print(f"{key:12s} unseen {unseen:.2f} seen {seen:.2f}")
    output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("bn", "views"):
        sys.exit("usage: rescore.py bn|views STUDY_DIR OUTPUT.json")
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
