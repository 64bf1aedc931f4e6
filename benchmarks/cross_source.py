"""Score fashion-trained bundles on photos from another source: ../shared/datasets/apparel.

    python benchmarks/cross_source.py src/fashionnet/default_model runs/mine [--name NAME]
        [--no-abstain]

The shipped model is judged, outside this repo, on photos from other sources; this is the
nearest check we can run here. Apparel's folders are mapped onto the bundle's labels: its
*pants* are the fashion set's *jeans*; shoes, dress and shirt keep their names; shorts have no
counterpart and are left out. A colour the bundle does not know (brown, green, white) becomes an
unknown label, so those images score the category head alone: garments of colours the network
never saw, the hardest test of a category branch that should not read colour. Figures per
folder, then three summaries:

- seen: folders whose (colour, category) the bundle trained on (black and blue pants as jeans);
- unseen: known colours in a combination it never saw (red pants as red jeans);
- category on new colours: shoes, dresses and shirts in colours outside its label set.

Writes results/current/cross_source/<name>.json: ``--name``, else the bundle folder's name, or for a
study's fold model (``.../folds/<combination>``) its last three path parts joined by ``_``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APPAREL = ROOT.parent / "shared" / "datasets" / "apparel"
#: apparel category -> the fashion set's; categories not listed are left out.
CATEGORIES = {"pants": "jeans", "shoes": "shoes", "dress": "dress", "shirt": "shirt"}


def folders(apparel: Path, colours: set[str], categories: set[str]
            ) -> list[tuple[Path, str | None, str]]:
    """(apparel folder, colour or None when the bundle does not know it, category) to score."""
    chosen = []
    for sub in sorted(p for p in apparel.iterdir() if p.is_dir()):
        colour, _, category = sub.name.partition("_")
        mapped = CATEGORIES.get(category)
        if mapped in categories:
            chosen.append((sub, colour if colour in colours else None, mapped))
    return chosen


def score(bundle_dir: str, apparel: Path, only: set[str] | None = None,
          abstain: bool = True) -> dict:
    from fashionnet.heads import combination
    from fashionnet.inference import expand_inputs, load

    predictor = load(bundle_dir, abstain=abstain)
    heads = {h.name: h for h in predictor.heads}
    trained = set(predictor.bundle.trained_combinations)
    rows = {}
    totals = {"seen": [0, 0], "unseen": [0, 0], "new_colour_category": [0, 0]}
    for folder, colour, category in folders(apparel, set(heads["color"].classes),
                                            set(heads["category"].classes)):
        if only and folder.name not in only:
            continue
        predictions = [p for p in predictor.predict_files(expand_inputs([folder]))
                       if not p.error]
        n = len(predictions)
        cat_ok = sum(p.heads["category"].label == category for p in predictions)
        row = {"as": f"{colour or '?'}_{category}", "count": n, "category_accuracy": cat_ok / n,
               "called": dict(Counter(p.heads["category"].label for p in predictions))}
        if colour is None:
            group, right = "new_colour_category", cat_ok
        else:
            combo = combination({"color": colour, "category": category}, predictor.heads)
            group = "seen" if combo in trained else "unseen"
            col_ok = [p.heads["color"].label == colour for p in predictions]
            right = sum(c and p.heads["category"].label == category
                        for c, p in zip(col_ok, predictions))
            row.update(color_accuracy=sum(col_ok) / n, exact_match=right / n)
        totals[group][0] += right
        totals[group][1] += n
        rows[folder.name] = {"group": group, **row}
    summary = {g: (r / n if n else None) for g, (r, n) in totals.items()}
    return {"bundle": str(bundle_dir), "abstain": abstain, "folders": rows, "summary": summary,
            "counts": {g: n for g, (_, n) in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--apparel", type=Path, default=APPAREL)
    parser.add_argument("--name", help="results file name (one bundle only)")
    parser.add_argument("--folders", help="score only these apparel folders (comma-separated)")
    parser.add_argument("--no-abstain", dest="abstain", action="store_false",
                        help="ignore the bundle's out-of-set rules: every photo gets a label "
                             "(as bundles before the rules were scored; an unknown counts as "
                             "wrong otherwise)")
    args = parser.parse_args(argv)
    if not args.apparel.is_dir():
        print(f"{args.apparel}: not found (the apparel dataset lives in ../shared)")
        return 2
    out = ROOT / "results" / "current" / "cross_source"
    out.mkdir(parents=True, exist_ok=True)
    only = set(args.folders.split(",")) if args.folders else None
    for bundle in args.bundles:
        result = score(bundle, args.apparel, only, args.abstain)
        name = (Path(args.name).name if args.name and len(args.bundles) == 1
                else "_".join(Path(bundle).parts[-3:]) if "folds" in Path(bundle).parts
                else Path(bundle).name)
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"\n{bundle}")
        print("| apparel folder | scored as | images | exact | colour | category |")
        print("| --- | --- | --- | --- | --- | --- |")
        for folder, row in result["folders"].items():
            exact, colour = (f"{row[k]:.1%}" if k in row else "–"
                             for k in ("exact_match", "color_accuracy"))
            print(f"| {folder} | {row['as']} ({row['group']}) | {row['count']} | {exact} | "
                  f"{colour} | {row['category_accuracy']:.1%} |")
        s = result["summary"]
        print(" · ".join(f"{group} {value:.1%}" for group, value in s.items()
                         if value is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
