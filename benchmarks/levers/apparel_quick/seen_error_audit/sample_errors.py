"""Which of a fold model's *seen* apparel test images does it get wrong, and why?

Lists every seen test image (the held-out combination's images left out) whose colour or
category the model gets wrong, then draws a fixed random sample of them to be judged by eye:

    python benchmarks/levers/apparel_quick/seen_error_audit/sample_errors.py ../shared/datasets/apparel \
        runs/apparel_nb_cgm_gt/folds/black_pants 48 \
        > results/levers/apparel_quick/seen_error_audit/black_pants_sample.json

Writes JSON (counts and the sample: path, label, prediction) to stdout; with ``--sheet F.png``
as a fourth argument it also draws the sample as a contact sheet, which stays out of the
repository (the images are the dataset's).
"""

import json
import random
import sys
from pathlib import Path

import numpy as np

from fashionnet.inference import load


def main(dataset: str, fold_run: str, size: int, sheet: str | None = None) -> dict:
    root = Path(dataset)
    held_out = Path(fold_run).name
    test = [p for p in json.loads(Path(fold_run, "split.json").read_text())["test"]
            if p.split("/")[0] != held_out]
    predictor = load(fold_run)
    probs = [predictor.predict_probabilities(np.stack([predictor.decode(root / p)
                                                       for p in test[i:i + 128]]))
             for i in range(0, len(test), 128)]
    names = {h.name: np.array(h.classes) for h in predictor.heads}
    predicted = {head: names[head][np.concatenate([b[k] for b in probs]).argmax(1)]
                 for k, head in enumerate(names)}
    errors = []
    for i, path in enumerate(test):
        color, category = path.split("/")[0].split("_")
        guess = f"{predicted['color'][i]}_{predicted['category'][i]}"
        if guess != f"{color}_{category}":
            errors.append({"path": path, "label": f"{color}_{category}", "predicted": guess})
    sample = random.Random(0).sample(errors, min(size, len(errors)))
    if sheet:
        draw_sheet(root, sample, sheet)
    return {"fold": fold_run, "seen_test_images": len(test), "seen_errors": len(errors),
            "seen_exact": 1 - len(errors) / len(test), "sample": sample}


def draw_sheet(root: Path, sample: list[dict], out: str, width: int = 150) -> None:
    from PIL import Image, ImageDraw

    rows = (len(sample) + 5) // 6
    sheet = Image.new("RGB", (width * 6, (width + 24) * rows), "white")
    for i, item in enumerate(sample):
        image = Image.open(root / item["path"]).convert("RGB")
        image.thumbnail((width, width))
        x, y = (i % 6) * width, (i // 6) * (width + 24)
        sheet.paste(image, (x, y + 24))
        pen = ImageDraw.Draw(sheet)
        pen.text((x + 2, y + 1), f"{i} label {item['label']}", fill="black")
        pen.text((x + 2, y + 12), f"says {item['predicted']}", fill="red")
    sheet.save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(args[0], args[1], int(args[2]), args[3] if len(args) > 3 else None),
                     indent=1))
