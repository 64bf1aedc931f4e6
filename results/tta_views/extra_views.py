"""Same weights: the category head's probabilities averaged over extra views; folds re-scored.

The default already averages the category branch over the image and its mirror image. This adds
views the training jitter also makes (a 10 % zoom in or out, a 3-pixel diagonal shift either
way) on each fold model of a finished study, and scores held-out and seen test images as the
study did.

    python results/tta_views/extra_views.py runs/study_bd50_s42 results/tta_views/bd50_s42.json
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

from fashionnet.bundle import load_bundle
from fashionnet.config import TrainConfig
from fashionnet.evaluation import report_from_probabilities
from fashionnet.model.fashionnet import predict_probabilities
from fashionnet.training import load_dataset, split_dataset


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


if len(sys.argv) != 3:
    sys.exit("usage: extra_views.py STUDY_DIR OUTPUT.json")
study_dir = Path(sys.argv[1])
study = json.loads((study_dir / "study.json").read_text())
config = TrainConfig.from_dict(study["config"])
data = load_dataset(config, progress=False)
cat = [h.name for h in data.heads].index("category")
VIEWS = {"z90": lambda x: zoom(x, 0.9), "z110": lambda x: zoom(x, 1.1),
         "s+": lambda x: shift(x, 3, 3), "s-": lambda x: shift(x, -3, -3)}
COMBOS = {"base": [], "z90": ["z90"], "z90+z110": ["z90", "z110"], "shifts": ["s+", "s-"],
          "all4": ["z90", "z110", "s+", "s-"]}
out = {}
for combo in study["folds"]:
    split = split_dataset(data, config.with_overrides(holdout=[combo]))
    folder = study_dir / "folds" / combo
    bundle = load_bundle(folder)
    model = keras.saving.load_model(folder / "model.keras", safe_mode=True)
    x = data.images[split.test]
    base = predict_probabilities(model, x)
    views = {k: predict_probabilities(model, f(x))[cat] for k, f in VIEWS.items()}
    recs = [data.records[i] for i in split.test]
    row = {}
    for name, extra in COMBOS.items():
        probs = list(base)
        probs[cat] = (base[cat] + sum(views[v] for v in extra)) / (1 + len(extra))
        r = report_from_probabilities(data.heads, recs, probs, bundle.trained_combinations)
        row[name] = (round(100 * r["combinations"][combo]["exact_match"], 2),
                     round(100 * r["seen_exact_match"], 2))
    out[combo] = row
    print(combo, row, flush=True)
for name in COMBOS:
    unseen, seen = (np.mean([r[name][k] for r in out.values()]) for k in (0, 1))
    print(f"{name:10s} unseen {unseen:.2f} seen {seen:.2f}")
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
