import json

import numpy as np
import pytest

from fashionnet.cli import main
from fashionnet.data.sources import Record
from fashionnet.evaluation import report_from_probabilities
from fashionnet.heads import HeadSpec

HEADS = [HeadSpec("color", ["black", "red"]), HeadSpec("category", ["dress", "shoes"])]


def test_report_on_hand_made_predictions_with_partner_swaps():
    records = [Record("a", {"color": "red", "category": "dress"}),
               Record("b", {"color": "black", "category": "shoes"}),
               Record("c", {"color": "red", "category": "shoes"}),   # unseen
               Record("d", {"color": "red", "category": "shoes"})]   # unseen
    color = np.array([[.1, .9], [.8, .2], [.2, .8], [.7, .3]])      # d -> black: swap
    category = np.array([[.9, .1], [.1, .9], [.3, .7], [.2, .8]])
    rep = report_from_probabilities(HEADS, records, [color, category],
                                    ["red_dress", "black_shoes"])
    assert rep["exact_match"] == 0.75
    assert rep["seen_exact_match"] == 1.0 and rep["unseen_exact_match"] == 0.5
    assert rep["harmonic_mean"] == pytest.approx(2 / 3)
    assert rep["combinations"]["red_shoes"] == {
        "count": 2, "seen": False, "exact_match": 0.5,
        "heads": {"color": 0.5, "category": 1.0}}
    assert rep["partner_swaps"]["total"] == 1 and rep["partner_swaps"]["by_head"] == {"color": 1}
    assert rep["heads"]["color"]["confusion_matrix"] == [[1, 0], [1, 2]]


def test_evaluate_cli_writes_reports(tiny_bundle, tiny_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(tiny_bundle.bundle.path), "--dataset",
                 str(tiny_dataset), "--subset", "test", "--output", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["combinations"]["red_shoes"]["seen"] is False
    assert report["combinations"]["red_dress"]["seen"] is True
    assert report["count"] == tiny_bundle.metrics["test"]["count"]
    color = report["heads"]["color"]
    assert color["temperature"] == tiny_bundle.bundle.temperatures["color"]
    assert 0 <= color["ece_uncalibrated"] <= 1 and 0 <= color["ece"] <= 1
    assert {"confusion_color.png", "confusion_category.png", "report.md"} <= {
        p.name for p in out.iterdir()}
    assert "unseen" in capsys.readouterr().out


def test_study_runs_short_and_resumes(tiny_dataset, tmp_path, capsys):
    argv = ["study", "compositional", "--dataset", str(tiny_dataset), "--epochs", "1",
            "--input-size", "32", "--combinations", "red_shoes,blue_dress", "--output",
            str(tmp_path / "study"), "--quiet", "--no-cache", "--backbone", "scratch"]
    assert main(argv) == 0
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert set(study["folds"]) == {"red_shoes", "blue_dress"}
    fold = study["folds"]["red_shoes"]
    assert fold["unseen_count"] == 6 and 0 <= fold["unseen_exact_match"] <= 1
    lo, hi = fold["unseen_exact_match_ci95"]
    assert lo <= fold["unseen_exact_match"] <= hi
    assert "| red_shoes | 6 |" in (tmp_path / "study" / "study.md").read_text()
    capsys.readouterr()
    assert main(argv) == 0  # resumes: nothing to train again
    assert capsys.readouterr().out.count("| red_shoes |") == 1


def test_the_report_says_when_no_temperature_was_fitted():
    from fashionnet.evaluation import render_markdown

    records = [Record("a", {"color": "red", "category": "dress"})]
    rep = report_from_probabilities(HEADS, records, [np.array([[.1, .9]]), np.array([[.9, .1]])],
                                    ["red_dress"])
    for head in rep["heads"].values():
        head["temperature"] = 1.0  # what evaluate records for a bundle without temperatures
    text = render_markdown(rep)
    assert "fitted on the validation split" not in text and "no fitted temperature" in text
    rep["heads"]["color"]["temperature"] = 1.7
    assert "fitted on the validation split" in render_markdown(rep)


def test_a_multi_label_head_is_reported_with_map_and_per_label_f1():
    from fashionnet.evaluation import render_markdown, summary_table

    heads = [HeadSpec("color", ["black", "red"]),
             HeadSpec("tags", ["party", "work", "beach"], kind="multi")]
    rng = np.random.default_rng(0)
    records, tag_probs = [], []
    for i in range(60):
        tags = frozenset(t for t in ("party", "work", "beach") if rng.random() < 0.4)
        records.append(Record(f"{i}.jpg", {"color": ["black", "red"][i % 2], "tags": tags}))
        tag_probs.append([0.9 if t in tags else 0.1 for t in ("party", "work", "beach")])
    color = np.array([[0.8, 0.2] if i % 2 == 0 else [0.3, 0.7] for i in range(60)])
    rep = report_from_probabilities(heads, records, [color, np.array(tag_probs)])
    text = render_markdown(rep)
    assert "| tags | 100.00% | 100.00% | 100.00% | 0.5 |" in text  # mAP, macro-F1, subset, thr.
    assert "| party |" in text and "AP |" in text
    assert len([line for line in text.splitlines() if line.startswith("| black_")]) <= 40
    assert "mAP" in summary_table(rep) and "subset accuracy" in summary_table(rep)


def test_confusion_plot_shows_row_shares(tmp_path):
    pytest.importorskip("matplotlib")
    from fashionnet.plots import plot_confusion

    path = plot_confusion(np.array([[90, 10], [1, 1]]), ["a", "b"], "color", tmp_path / "c.png")
    from PIL import Image

    with Image.open(path) as im:
        assert im.width > 1.5 * im.height  # counts and shares side by side


def test_combinations_are_the_single_label_heads_and_unknowns_are_neither_seen_nor_unseen():
    from fashionnet.heads import attribute_combination

    heads = [HeadSpec("color", ["black", "red"]), HeadSpec("category", ["dress", "shoes"]),
             HeadSpec("tags", ["party", "work"], kind="multi")]
    assert attribute_combination({"color": "red", "category": "dress",
                                  "tags": frozenset({"party", "work"})}, heads) == "red_dress"
    records = [Record("a", {"color": "red", "category": "dress", "tags": frozenset({"party"})}),
               Record("b", {"color": None, "category": "shoes", "tags": frozenset()}),
               Record("c", {"color": "red", "category": "shoes", "tags": frozenset({"work"})})]
    probs = [np.array([[.1, .9], [.5, .5], [.2, .8]]), np.array([[.9, .1], [.1, .9], [.2, .8]]),
             np.array([[.9, .1], [.1, .1], [.1, .9]])]
    rep = report_from_probabilities(heads, records, probs, ["red_dress"])
    assert set(rep["combinations"]) == {"red_dress", "?_shoes", "red_shoes"}
    assert rep["combinations"]["?_shoes"]["seen"] is None
    assert rep["combinations"]["red_shoes"]["seen"] is False
    assert rep["partner_swaps"]["unseen_rows"] == 1  # red_shoes only, not the ? row
