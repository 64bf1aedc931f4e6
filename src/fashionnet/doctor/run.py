"""`run_doctor`: read the dataset, run each check, write the report folder atomically."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fashionnet.bundle import atomic_directory, load_bundle, read_split
from fashionnet.data.sources import dataset_root, read_dataset, relative_key
from fashionnet.doctor.images import decode_files, image_quality, listed_twice, unreadable_issues
from fashionnet.doctor.issues import DoctorResult, Issue, sort_issues
from fashionnet.doctor.labels import combination_matrices, duplicate_issues, label_counts
from fashionnet.doctor.report import write_report
from fashionnet.errors import FashionNetError
from fashionnet.extras import import_keras_quietly, require_doctor, require_training
from fashionnet.outputs import check_destination, dataset_inputs

log = logging.getLogger("fashionnet")

#: Decoding size without a model (only readability and the thumbnails depend on it).
CHECK_SIZE = 64


def run_doctor(dataset: str | Path, output: str | Path, *, model: str | Path | None = None,
               heads: list[str] | None = None, multi: list[str] | None = None,
               separator: str = "_", allow_outside: bool = False, overwrite: bool = False,
               workers: int | None = None, progress: bool = True, cache: bool = True,
               shown: int | None = None, seed: int = 0) -> DoctorResult:
    """Check a dataset (folder or manifest), with a trained run if ``model``; write the report.

    The report folder is written next to ``output`` and renamed into place: an existing one
    is kept unless ``overwrite``. Raises FashionNetError (one line) on bad input.
    """
    require_doctor("fashionnet doctor")
    started = time.perf_counter()
    output = Path(output)
    bundle = None
    if model is not None:
        require_training("fashionnet doctor --model")
        import_keras_quietly()
        bundle = load_bundle(model)
        heads = [h.name for h in bundle.heads]
        multi = [h.name for h in bundle.heads if h.multi]
    # Before minutes of work, not after: never the dataset, the model or a folder of the user's.
    check_destination(output, [*dataset_inputs(dataset),
                               *([("model", bundle.path)] if bundle else [])],
                      overwrite=overwrite)
    records, names = read_dataset(dataset, heads, multi or [], separator,
                                  allow_outside=allow_outside)
    root = dataset_root(dataset)
    paths = [r.path for r in records]
    keys = [relative_key(p, root) for p in paths]
    labels = [r.labels for r in records]
    split_of = _splits(bundle.path) if bundle else {}
    if bundle and split_of and not any(k in split_of for k in keys):
        raise FashionNetError(f"none of the images of {dataset} are in {bundle.path}/split.json: "
                              f"is it the dataset the model was trained on?")

    size = bundle.preprocessing.size if bundle else CHECK_SIZE
    decoded = decode_files(paths, size, progress=progress, cache=cache)
    issues: list[Issue] = unreadable_issues(keys, decoded.errors)
    readable = decoded.kept.tolist()
    if not readable:
        raise FashionNetError(f"{dataset}: no readable images (all {len(paths)} failed to decode)")
    log.info("checking image quality and duplicates (cleanvision) ...")
    quality = image_quality(paths, readable, keys, workers=workers, progress=progress)
    issues += quality.issues
    exact_sets = listed_twice(paths, readable) + quality.exact_sets
    near_sets = quality.near_sets
    issues += duplicate_issues(exact_sets, records, keys, names, kind="exact_duplicate",
                               source="cleanvision", split_of=split_of)
    issues += duplicate_issues(near_sets, records, keys, names, kind="near_duplicate",
                               source="cleanvision", split_of=split_of)
    sources: dict[str, dict] = {}
    notes: list[str] = []
    if bundle is not None:
        from fashionnet.doctor.model import find_with_model, model_outputs

        log.info("reading the model's predictions and embeddings (%d images) ...", len(readable))
        probs, features = model_outputs(bundle, decoded.images, progress=progress)
        found = find_with_model(bundle, probs, features, readable, labels, keys, split_of,
                                seed=seed, progress=progress)
        issues += found.issues
        issues += duplicate_issues(_new_sets(found.near_sets, exact_sets + near_sets), records,
                                   keys, names, kind="near_duplicate", source="embeddings",
                                   scores=found.near_scores, split_of=split_of,
                                   first_group=len(near_sets) + 1)
        sources, notes = found.sources, found.notes
    result = DoctorResult(
        dataset=str(dataset), root=root, heads=names, paths=paths, keys=keys, labels=labels,
        issues=sort_issues(issues), label_counts=label_counts(records, names),
        combinations=combination_matrices(records, names, separator),
        model=str(bundle.path) if bundle else None, sources=sources, notes=notes)
    result.seconds = time.perf_counter() - started
    with atomic_directory(output, overwrite=overwrite, command="doctor") as tmp:
        write_report(tmp, result, output, **({"shown": shown} if shown else {}))
    return result


def _splits(run: Path) -> dict[str, str]:
    """{image key: train | val | test} from the run's split.json ({} when it has none)."""
    document = read_split(run)
    if document is None:
        log.warning("%s: no readable split.json; every image is cross-validated", run)
        return {}
    if "paths" not in document:
        log.warning("%s/split.json: an older format without relative paths; ignored", run)
        return {}
    return {key: name for name in ("train", "val", "test")
            for key in document.get(name) or [] if isinstance(key, str)}


def _new_sets(sets: list[list[int]], known: list[list[int]]) -> list[list[int]]:
    """Embedding near-duplicate sets not already reported whole by cleanvision."""
    covered = [set(s) for s in known]
    return [s for s in sets if not any(set(s) <= c for c in covered)]
