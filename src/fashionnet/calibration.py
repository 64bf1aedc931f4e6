"""Fit a bundle's out-of-set rules and temperatures again, on its own validation split.

    fashionnet calibrate --model runs/mine --dataset data/ [--keep 0.96]

Training fits both (`fashionnet.open_set`, temperature scaling); this refits them without
retraining: for a bundle made before out-of-set rules existed, or to choose another share of
correct answers to keep (``keep``). The rules' class statistics come from the bundle's
training split, the thresholds and temperatures from its validation split (split.json). Needs
the Keras model (model.keras); an ONNX export in the bundle (and its int8 copy) is made again,
so that it carries the head features the rules read.
"""

from __future__ import annotations

from pathlib import Path

from fashionnet.bundle import LABELS_FILE, load_bundle, update_bundle_file, write_json
from fashionnet.data.images import decode_many
from fashionnet.data.sources import read_dataset
from fashionnet.errors import FashionNetError
from fashionnet.evaluation import split_subset
from fashionnet.heads import encode_targets
from fashionnet.inference import INT8_FILE
from fashionnet.metrics import apply_temperature, fit_temperature
from fashionnet.open_set import KEEP, fit_rules


def calibrate(model: str | Path, dataset: str | Path, *, keep: float = KEEP,
              allow_outside: bool = False, progress: bool = True) -> dict:
    """Refit and write the rules and temperatures; returns the new labels.json document."""
    from fashionnet.model.embeddings import embedded_heads, with_embeddings
    from fashionnet.model.fashionnet import predict_probabilities
    from fashionnet.runtime.runners import KerasRunner

    if not 0.5 <= keep < 1.0:  # below half, "unknown" would be the usual answer
        raise FashionNetError(f"--keep must be from 0.5 to below 1, not {keep}")
    bundle = load_bundle(model)
    heads = bundle.heads
    if not bundle.keras_path.is_file():
        raise FashionNetError(f"{bundle.keras_path}: missing; calibrating needs the Keras model")
    records, _ = read_dataset(dataset, [h.name for h in heads],
                              [h.name for h in heads if h.multi], allow_outside=allow_outside)
    runner = KerasRunner(bundle.keras_path, [h.output_name for h in heads])
    embedded = embedded_heads(runner.model, heads)
    network = with_embeddings(runner.model, embedded)  # the model's outputs, then features
    order = runner.order + list(range(len(heads), len(heads) + len(embedded)))
    got = {}
    for split in ("train", "val"):
        chosen = split_subset(bundle, records, split, dataset)
        decoded = decode_many([r.path for r in chosen], bundle.preprocessing.size,
                              progress=progress)
        chosen = [chosen[i] for i in decoded.kept]
        if not chosen:
            raise FashionNetError(f"{dataset}: no readable image in the bundle's {split} split")
        outputs = predict_probabilities(network, decoded.images, bundle.preprocessing.scale)
        out = [outputs[i] for i in order]  # heads in the bundle's order, then features
        targets = encode_targets(chosen, heads)
        got[split] = (out, [targets[h.output_name] for h in heads])
    (val_out, val_targets), train_targets = got["val"], got["train"][1]
    temperatures = {h.name: round(fit_temperature(t, p, h.multi), 4)
                    for h, p, t in zip(heads, val_out, val_targets)}
    val_probs = [apply_temperature(p, temperatures[h.name], h.multi)
                 for h, p in zip(heads, val_out)]
    features = {split: dict(zip(embedded, got[split][0][len(heads):]))
                for split in ("train", "val")} if embedded else {}
    bundle.temperatures = temperatures
    bundle.open_set = fit_rules(heads, val_probs, val_targets, features, train_targets, keep)
    document = bundle.labels_document()
    update_bundle_file(bundle.path, LABELS_FILE, lambda p: write_json(p, document))
    if bundle.onnx_path.is_file():
        from fashionnet.runtime.export import export, export_int8

        export(bundle.path, ["onnx"], overwrite=True)
        if (bundle.path / INT8_FILE).is_file():  # quantized from the model.onnx just replaced
            export_int8(bundle.path)
    return document
