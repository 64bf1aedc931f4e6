"""`fashionnet demo`: the whole product in one command, on generated data, no download.

Generates garments in 4 colours x 4 categories, keeps 3 combinations out of training, trains
briefly, then reports per-head accuracy on held-out test images of seen combinations and on
the never-seen combinations.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from fashionnet.config import TrainConfig
from fashionnet.data.synthetic import DEMO_HOLDOUT, write_dataset
from fashionnet.outputs import check_replaceable, claim_output


@dataclasses.dataclass
class DemoResult:
    bundle: Path
    seen: dict
    unseen: dict
    seconds: float


def run_demo(output: str | Path = "runs/demo", *, epochs: int | None = None,
             per_combination: int = 48, input_size: int = 64, overwrite: bool = True,
             verbose: int | str = 2, report: bool = True,
             backbone: str | None = None) -> DemoResult:
    """``backbone``: the category heads' features (default: the training default, the
    pretrained EfficientNet-Lite0; ``"scratch"``: the fast option)."""
    from fashionnet.evaluation import report_from_probabilities
    from fashionnet.inference import Predictor
    from fashionnet.training import load_dataset, train

    started = time.perf_counter()
    output = Path(output)
    data_dir = output / "data"
    if data_dir.exists() or data_dir.is_symlink():
        check_replaceable(data_dir, "--output")  # replaced only if a demo wrote it
        shutil.rmtree(data_dir)
    print(f"generating {per_combination * 16} synthetic garment images in {data_dir} ...")
    write_dataset(data_dir, per_combination=per_combination, size=96, seed=7)
    claim_output(data_dir, "demo")
    # A short run: small batches and a faster BatchNorm average, so that evaluation-mode
    # statistics settle within a few hundred steps.
    config = TrainConfig(dataset=str(data_dir), input_size=input_size, batch_size=16,
                         bn_momentum=0.9, epochs=epochs if epochs is not None else 15,
                         holdout=list(DEMO_HOLDOUT), augment=True, cache=False, dedupe=False,
                         backbone=backbone)
    print(f"training {config.epochs} epochs on the {config.backbone} category backbone; held out "
          f"of training: {', '.join(DEMO_HOLDOUT)}")
    data = load_dataset(config, progress=False)
    result = train(config, output / "model", overwrite=overwrite, verbose=verbose, data=data)
    split = result.split
    records = [data.records[i] for i in split.test]
    probs = Predictor(result.bundle, backend="keras").predict_probabilities(
        data.images[split.test])
    rep = report_from_probabilities(data.heads, records, probs,
                                    result.bundle.trained_combinations)
    seen = _group(rep, seen=True)
    unseen = _group(rep, seen=False)
    seconds = time.perf_counter() - started
    if report:
        print()
        print(f"{'':22}" + "".join(f"{h:>10}" for h in seen["heads"]) + f"{'exact':>10}")
        for title, g in (("seen combinations", seen), ("held-out combinations", unseen)):
            print(f"{title:22}" + "".join(f"{100 * v:9.1f}%" for v in g["heads"].values())
                  + f"{100 * g['exact_match']:9.1f}%   ({g['count']} images)")
        print(f"\nmodel bundle: {result.bundle.path}  ({seconds:.0f} s)")
        print(f"try: fashionnet classify --model {result.bundle.path} "
              f"{data_dir / DEMO_HOLDOUT[0]}")
    return DemoResult(result.bundle.path, seen, unseen, seconds)


def _group(report: dict, seen: bool) -> dict:
    """Per-head accuracy and exact match pooled over seen or unseen combinations."""
    combos = [c for c in report["combinations"].values() if c["seen"] is seen]
    count = sum(c["count"] for c in combos)
    heads = list(report["heads"])
    if not count:
        return {"count": 0, "heads": dict.fromkeys(heads, float("nan")),
                "exact_match": float("nan")}
    return {"count": count,
            "heads": {h: sum(c["heads"][h] * c["count"] for c in combos) / count for h in heads},
            "exact_match": sum(c["exact_match"] * c["count"] for c in combos) / count}
