"""The model card and the runs table (issue 37): generated from a bundle's own files."""

from __future__ import annotations

import json

from fashionnet.cli import main
from fashionnet.model_card import CARD_FILE, never_seen, render_model_card, wilson_interval


def test_every_bundle_has_a_card_naming_its_unseen_combinations_and_figures(tiny_bundle):
    path = tiny_bundle.bundle.path
    card = (path / CARD_FILE).read_text()
    unseen = never_seen(tiny_bundle.bundle)
    assert "red_shoes" in unseen  # held out of the tiny bundle's training
    assert all(f"`{combo}`" in card for combo in unseen)
    metrics = json.loads((path / "metrics.json").read_text())
    for name, head in metrics["test"]["heads"].items():
        assert f"| {name} | {100 * head['accuracy']:.1f} % |" in card
    assert f"{100 * metrics['test']['exact_match']:.1f} %" in card
    for head in tiny_bundle.bundle.heads:
        assert ", ".join(head.classes) in card
    assert f"# Model card: {path.name}" in card and ".tmp-" not in card


def test_the_card_counts_each_combination_per_split(tiny_bundle):
    card = (tiny_bundle.bundle.path / CARD_FILE).read_text()
    counts = tiny_bundle.metrics["combinations"]
    assert counts["red_shoes"]["train"] == 0 and counts["red_shoes"]["test"] > 0
    row = next(line for line in card.splitlines() if line.startswith("| red_dress |"))
    n = counts["red_dress"]
    assert row == f"| red_dress | {n['train']} | {n['val']} | {n['test']} |"


def test_card_after_evaluate_adds_held_out_figures(tiny_bundle, tiny_dataset, tmp_path,
                                                   capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle.bundle.path, run)
    assert "No held-out-combination figures" in render_model_card(run)
    assert main(["evaluate", "--model", str(run), "--dataset", str(tiny_dataset),
                 "--subset", "test"]) == 0
    assert main(["card", str(run)]) == 0
    card = (run / CARD_FILE).read_text()
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert f"unseen {100 * report['unseen_exact_match']:.1f} %" in card


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(0.95, 500)
    assert 0.92 < lo < 0.95 < hi < 0.97
    assert wilson_interval(1.0, 10)[1] == 1.0


def test_runs_lists_each_bundle_with_its_figures(tiny_bundle, tmp_path, capsys):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(tiny_bundle.bundle.path, tmp_path / "runs" / name)
    (tmp_path / "runs" / "notes").mkdir()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["run", "version"] and "exact" in out[0]
    assert [line.split()[0] for line in out[1:]] == ["a", "b"]
    exact = tiny_bundle.metrics["test"]["exact_match"]
    assert f"{100 * exact:.2f}%" in out[1]
    assert main(["runs", str(tmp_path / "runs"), "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("run,version,") and len(rows) == 3
