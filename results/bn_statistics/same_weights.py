"""Same weights, BatchNorm statistics re-estimated two ways; every fold of a study re-scored.

Precise BN (`fashionnet.training.precise_batchnorm`) runs the model in training mode, so the
category branch's training augmentations (random backdrop, photometric and shape jitter) are on
while the statistics are gathered: the statistics describe augmented images, while inference
sees plain ones. This re-estimates them with those layers on (what training does) and off, on
each fold model of a finished study, and scores held-out and seen test images as the study did.

    python results/bn_statistics/same_weights.py runs/study_bd50_s42 results/bn_statistics/bd50_s42.json
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


def main(study_dir: Path, output: Path) -> None:
    study = json.loads((study_dir / "study.json").read_text())
    config = TrainConfig.from_dict(study["config"])
    data = load_dataset(config, progress=False)
    rows = {}
    for combo, stored in study["folds"].items():
        split = split_dataset(data, config.with_overrides(holdout=[combo]))
        folder = study_dir / "folds" / combo
        bundle = load_bundle(folder)
        model = keras.saving.load_model(folder / "model.keras", safe_mode=True)

        def score(model=model, split=split, bundle=bundle, combo=combo):
            probs = predict_probabilities(model, data.images[split.test])
            report = report_from_probabilities(data.heads, [data.records[i] for i in split.test],
                                               probs, bundle.trained_combinations)
            return (round(100 * report["combinations"][combo]["exact_match"], 2),
                    round(100 * report["seen_exact_match"], 2))

        row = {"stored": (round(100 * stored["unseen_exact_match"], 2),
                          round(100 * stored["seen_exact_match"], 2)),
               "loaded": score()}
        train_images = data.images[split.train]
        precise_batchnorm(model, train_images, config.batch_size, seed=config.seed)
        row["bn_aug_on"] = score()
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, AUGMENTATIONS):
                layer.call = lambda inputs, training=None: inputs
        precise_batchnorm(model, train_images, config.batch_size, seed=config.seed)
        row["bn_aug_off"] = score()
        rows[combo] = row
        print(combo, row, flush=True)
    for key in ("stored", "loaded", "bn_aug_on", "bn_aug_off"):
        unseen = np.mean([r[key][0] for r in rows.values()])
        seen = np.mean([r[key][1] for r in rows.values()])
        print(f"{key:12s} unseen {unseen:.2f} seen {seen:.2f}")
    output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: same_weights.py STUDY_DIR OUTPUT.json")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
