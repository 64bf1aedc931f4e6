"""Out-of-set answers (issue 34): a head says "unknown" for what it has no name for.

A model trained on black and red garments must answer unknown for blue and green ones and
still name black and red; the rule travels in labels.json, through the ONNX export, the CLI,
`evaluate` and the server.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil

import numpy as np
import pytest

from fashionnet.bundle import load_bundle
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec
from fashionnet.open_set import (
    KEEP,
    MIN_FIT,
    QUANTILES,
    OpenSetRule,
    auroc,
    fit_rule,
    fit_rules,
    risk_coverage,
)

COLOUR = HeadSpec("color", ["black", "red"], branch="color")
CATEGORY = HeadSpec("category", ["dress", "jeans", "shirt", "shoes"])


def _paths(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _colour_unknown(results) -> float:
    return float(np.mean([r.heads["color"].unknown for r in results]))


# -- the rule itself, on hand-made numbers ------------------------------------------------

def test_msp_threshold_keeps_the_share_of_correct_answers():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([5, 1], 400)
    labels = np.zeros(400, int)
    rule = fit_rule("msp", probs, labels)
    correct = probs.argmax(1) == labels
    kept = (rule.scores(probs[correct]) <= rule.threshold).mean()
    assert abs(kept - KEEP) < 0.01
    assert rule.share(np.array([rule.threshold]))[0] == pytest.approx(KEEP, abs=0.01)


def test_embedding_rule_flags_a_point_far_from_every_class():
    rng = np.random.default_rng(1)
    centres = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    labels = rng.integers(0, 2, 300)
    train = centres[labels] + rng.normal(0, 0.05, (300, 4))
    val_labels = rng.integers(0, 2, 100)
    val = centres[val_labels] + rng.normal(0, 0.05, (100, 4))
    probs = np.eye(2)[val_labels] * 0.9 + 0.05
    rule = fit_rule("embedding", probs, val_labels, val, train, labels)
    far = np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    near = centres + 0.01
    assert (rule.scores(np.full((2, 2), 0.5), far) > rule.threshold).all()
    assert (rule.scores(np.full((2, 2), 0.5), near) <= rule.threshold).all()


def test_rule_round_trips_and_refuses_what_does_not_fit_its_head():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    emb = np.eye(3)[labels] + rng.normal(0, 0.1, (200, 3))
    rule = fit_rule("embedding", np.eye(2)[labels] * 0.8 + 0.1, labels, emb, emb, labels)
    again = OpenSetRule.from_dict(json.loads(json.dumps(rule.to_dict())), COLOUR, "x")
    assert again.to_dict() == rule.to_dict()
    good = rule.to_dict()
    for change, words in (({"score": "energy"}, "score must be one of"),
                          ({"threshold": math.nan}, "finite number"),
                          ({"threshold": True}, "finite number"),
                          ({"quantiles": [1.0, 0.0] * 50 + [1.0]}, "ascending"),
                          ({"quantiles": "abc"}, "numbers only"),
                          ({"means": [[0.0, 1.0, 2.0]]}, "means must be (classes=2"),
                          ({"precision": [[1.0]]}, "precision must be (3, 3)"),
                          ({"means": [[math.inf] * 3] * 2}, "finite")):
        with pytest.raises(FashionNetError, match=re.escape(words)):
            OpenSetRule.from_dict({**good, **change}, COLOUR, "field open_set.color")
    multi = HeadSpec("tags", ["a", "b"], kind="multi")
    with pytest.raises(FashionNetError, match="multi-label"):
        OpenSetRule.from_dict(good, multi, "x")


def test_no_rule_from_too_few_correct_validation_answers():
    probs = np.tile([[0.9, 0.1]], (MIN_FIT - 1, 1))
    targets = np.tile([[1.0, 0.0]], (MIN_FIT - 1, 1))
    assert fit_rules([HeadSpec("c", ["a", "b"])], [probs], [targets]) == {}
    probs, targets = np.vstack([probs, probs]), np.vstack([targets, targets])
    assert set(fit_rules([HeadSpec("c", ["a", "b"])], [probs], [targets])) == {"c"}


def test_risk_coverage_and_auroc_by_hand():
    curve = risk_coverage(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, True]))
    assert curve["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert curve["risk"] == [0.0, 0.0, pytest.approx(0.3333), 0.25]
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert auroc([0.3, 0.4], [0.1, 0.2]) == 0.0


# -- a model trained on two colours --------------------------------------------------------

def test_training_stores_rules_and_the_model_abstains_on_colours_it_never_saw(
        two_colour_bundle, two_colour_dataset):
    from fashionnet.inference import load

    bundle = load_bundle(two_colour_bundle.bundle.path)
    assert bundle.open_set["color"].score == "embedding"
    predictor = load(bundle.path, backend="keras")
    other = predictor.predict_files(_paths(two_colour_dataset["other"]))
    known = predictor.predict_files(_paths(two_colour_dataset["known"]))
    assert _colour_unknown(other) >= 0.8
    assert _colour_unknown(known) <= 0.3
    answered = [r for r in known if not r.heads["color"].unknown]
    right = [r.heads["color"].label == r.source.split("/")[-2].split("_")[0] for r in answered]
    assert np.mean(right) >= 0.9
    head = other[0].heads["color"]
    if head.unknown:
        data = head.to_dict()
        assert data["label"] is None and data["guess"] in {"black", "red"}
        assert data["out_of_set"] >= KEEP and "not one of black, red" in head.describe()
    plain = load(bundle.path, backend="keras", abstain=False).predict_files(
        _paths(two_colour_dataset["other"]))
    assert _colour_unknown(plain) == 0.0
    assert [r.heads["color"].label for r in plain] == [r.heads["color"].guess for r in other]


def test_rules_survive_the_onnx_export(two_colour_bundle, two_colour_dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    from fashionnet.inference import load
    from fashionnet.runtime.export import export

    copy = tmp_path / "bundle"
    shutil.copytree(two_colour_bundle.bundle.path, copy)
    export(copy)
    paths = _paths(two_colour_dataset["other"]) + _paths(two_colour_dataset["known"])
    onnx = load(copy, backend="onnx").predict_files(paths)
    keras = load(copy, backend="keras").predict_files(paths)
    assert [r.heads["color"].unknown for r in onnx] == [r.heads["color"].unknown
                                                         for r in keras]
    for a, b in zip(onnx, keras):
        assert a.heads["color"].out_of_set == pytest.approx(b.heads["color"].out_of_set,
                                                            abs=0.02)
    # An export made without the head's features: one line that says what to do.
    labels = json.loads((copy / "labels.json").read_text())
    rules = labels.pop("open_set")
    (copy / "labels.json").write_text(json.dumps(labels))
    export(copy, overwrite=True)
    labels["open_set"] = rules
    (copy / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(FashionNetError, match="color_embedding.*export again.*--no-abstain"):
        load(copy, backend="onnx")
    assert load(copy, backend="onnx", abstain=False).predict_files(paths[:1])[0].heads


def test_classify_says_unknown_in_text_json_and_csv(two_colour_bundle, two_colour_dataset,
                                                    capsys):
    from fashionnet.cli import main

    model = str(two_colour_bundle.bundle.path)
    green = _paths(two_colour_dataset["other"] / "green_dress")
    assert main(["classify", "--model", model, "--backend", "keras", *map(str, green)]) == 0
    out = capsys.readouterr()
    assert "color: unknown: not one of black, red" in out.out
    assert "the model knows color: black, red; category: dress, jeans, shirt, shoes" in out.err
    assert main(["classify", "--model", model, "--backend", "keras", "--json",
                 *map(str, green)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sum(r["heads"]["color"]["label"] is None for r in rows) >= 2
    assert main(["classify", "--model", model, "--backend", "keras", "--format", "csv",
                 *map(str, green)]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {"color_guess", "color_out_of_set"} <= set(table[0])
    assert sum(r["color"] == "unknown" and r["color_probability"] == "" for r in table) >= 2
    assert main(["classify", "--model", model, "--backend", "keras", "--no-abstain", "--json",
                 *map(str, green)]) == 0
    assert all(r["heads"]["color"]["label"] in {"black", "red"}
               for r in json.loads(capsys.readouterr().out))


def test_evaluate_reports_the_answered_share_and_risk_coverage(two_colour_bundle,
                                                               two_colour_dataset, tmp_path):
    pytest.importorskip("matplotlib")
    from fashionnet.evaluation import evaluate

    report = evaluate(two_colour_bundle.bundle.path, two_colour_dataset["known"],
                      output=tmp_path / "eval", backend="keras", progress=False)
    entry = report["heads"]["color"]["open_set"]
    assert 0.0 < entry["answered"] <= 1.0 and entry["score"] == "embedding"
    assert entry["risk_coverage"]["coverage"][-1] == 1.0
    assert (tmp_path / "eval" / "risk_coverage.png").stat().st_size > 1000
    assert "Out-of-set answers" in (tmp_path / "eval" / "report.md").read_text()
    from fashionnet.evaluation import summary_table

    assert "color: answers" in summary_table(report)
    plain = evaluate(two_colour_bundle.bundle.path, two_colour_dataset["known"],
                     backend="keras", progress=False, abstain=False)
    assert "open_set" not in plain["heads"]["color"]
    assert plain["heads"]["color"]["accuracy"] == report["heads"]["color"]["accuracy"]


def test_calibrate_refits_the_rules_with_another_keep(two_colour_bundle, two_colour_dataset,
                                                      tmp_path):
    from fashionnet.calibration import calibrate

    copy = tmp_path / "bundle"
    shutil.copytree(two_colour_bundle.bundle.path, copy)
    before = load_bundle(copy).open_set["color"].threshold
    calibrate(copy, two_colour_dataset["train"], keep=0.8, progress=False)
    after = load_bundle(copy).open_set["color"]
    assert after.threshold < before and len(after.quantiles) == QUANTILES
    with pytest.raises(FashionNetError, match="--keep"):
        calibrate(copy, two_colour_dataset["train"], keep=1.5, progress=False)


def test_server_answers_null_with_the_guess(two_colour_bundle, two_colour_dataset):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fashionnet.server.app import create_app

    client = TestClient(create_app(two_colour_bundle.bundle.path, backend="keras"))
    heads = {h["name"]: h for h in client.get("/v1/model").json()["heads"]}
    assert heads["color"]["abstains"] and heads["color"]["out_of_set_score"] == "embedding"
    answers = []
    for path in _paths(two_colour_dataset["other"] / "green_shirt"):
        reply = client.post("/v1/predict", files={"file": (path.name, path.read_bytes())})
        assert reply.status_code == 200
        answers.append(reply.json()["heads"]["color"])
    assert sum(a["label"] is None and a["unknown"] for a in answers) >= 2
    assert all(a["guess"] in {"black", "red"} for a in answers)


# -- hostile labels.json rules: one line naming the field, never a trace --------------------

@pytest.fixture
def rules_copy(two_colour_bundle, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(two_colour_bundle.bundle.path, path)
    return path


def _edit(path, change):
    doc = json.loads((path / "labels.json").read_text())
    (path / "labels.json").write_text(json.dumps(change(doc)))


@pytest.mark.parametrize("change,field", [
    (lambda d: {**d, "open_set": []}, "open_set"),
    (lambda d: {**d, "open_set": {"size": d["open_set"]["color"]}}, "open_set.size"),
    (lambda d: {**d, "open_set": {"color": "loud"}}, "open_set.color"),
    (lambda d: {**d, "open_set": {"color": {**d["open_set"]["color"], "threshold": None}}},
     "open_set.color.threshold"),
    (lambda d: {**d, "open_set": {"color": {**d["open_set"]["color"],
                                            "means": [[0.0]] * 2}}}, "open_set.color"),
    (lambda d: {**d, "open_set": {"color": {**d["open_set"]["color"],
                                            "precision": [["x"]]}}}, "open_set.color.precision"),
    (lambda d: {**d, "open_set": {"color": {**d["open_set"]["color"],
                                            "quantiles": [0.0] * 7}}}, "open_set.color.quantiles"),
    (lambda d: {**d, "open_set": {"color": {**d["open_set"]["color"],
                                            "means": [[1e3] * 300] * 2}}}, "at most 256"),
])
def test_malformed_rules_are_one_line(rules_copy, change, field, capsys, two_colour_dataset):
    from fashionnet.cli import main

    _edit(rules_copy, change)
    with pytest.raises(FashionNetError, match="labels.json") as info:
        load_bundle(rules_copy)
    assert field in str(info.value) and "\n" not in str(info.value)
    photo = _paths(two_colour_dataset["known"])[0]
    code = main(["classify", "--model", str(rules_copy), str(photo)])
    err = capsys.readouterr().err
    assert code == 2 and field in err and "Traceback" not in err


def test_rule_wider_than_the_model_features_is_refused_at_load(rules_copy):
    from fashionnet.inference import load

    rule = load_bundle(rules_copy).open_set["color"]
    dims = len(rule.means[0]) + 2
    _edit(rules_copy, lambda d: {**d, "open_set": {**d["open_set"], "color": {
        **d["open_set"]["color"], "means": [[0.1] * dims] * 2,
        "precision": np.eye(dims).tolist()}}})
    with pytest.raises(FashionNetError, match=f"color_embedding.*has {dims - 2} units.*{dims}"):
        load(rules_copy, backend="keras")


def test_a_multi_label_head_with_nothing_over_its_threshold_says_none_of_these():
    from fashionnet.inference import head_prediction

    tags = HeadSpec("occasion", ["party", "work", "sport"], kind="multi", threshold=0.5)
    none = head_prediction(tags, np.array([0.2, 0.4, 0.1]))
    assert none.unknown and none.label == [] and none.guess == "work"
    assert none.describe().startswith("none of party, work, sport (highest: work 40.00%")
    assert none.to_dict()["unknown"] is True and none.to_dict()["label"] == []
    some = head_prediction(tags, np.array([0.7, 0.4, 0.9]))
    assert not some.unknown and some.label == ["sport", "party"]


def test_calibrate_remakes_the_int8_model_that_reads_the_features(two_colour_bundle,
                                                                 two_colour_dataset, tmp_path):
    """An int8 copy quantized before the rules existed lacks the features; loading it says
    how to fix that, and `calibrate` makes it again with them."""
    pytest.importorskip("onnxruntime")
    from fashionnet.calibration import calibrate
    from fashionnet.inference import load
    from fashionnet.runtime.export import export, export_int8

    copy = tmp_path / "bundle"
    shutil.copytree(two_colour_bundle.bundle.path, copy)
    labels = json.loads((copy / "labels.json").read_text())
    rules = labels.pop("open_set")
    (copy / "labels.json").write_text(json.dumps(labels))
    export(copy)
    export_int8(copy, two_colour_dataset["train"])  # both without the head features
    labels["open_set"] = rules
    (copy / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(FashionNetError, match="--int8"):
        load(copy, precision="int8")
    calibrate(copy, two_colour_dataset["train"], progress=False)
    int8 = load(copy, precision="int8")
    green = int8.predict_files(_paths(two_colour_dataset["other"] / "green_dress"))
    assert int8.precision == "int8" and _colour_unknown(green) >= 0.5


def test_calibrate_refuses_in_one_line(two_colour_bundle, two_colour_dataset, tmp_path, capsys):
    """No model.keras, or a dataset the bundle was not trained on: exit 2, one line, and
    labels.json untouched."""
    from fashionnet.cli import main

    copy = tmp_path / "bundle"
    shutil.copytree(two_colour_bundle.bundle.path, copy)
    before = (copy / "labels.json").read_bytes()
    other = two_colour_dataset["other"]
    assert main(["calibrate", "--model", str(copy), "--dataset", str(other)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "split" in errors[0] and "Traceback" not in err
    (copy / "model.keras").unlink()
    assert main(["calibrate", "--model", str(copy), "--dataset",
                 str(two_colour_dataset["train"])]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.keras: missing" in errors[0] and "Traceback" not in err
    assert (copy / "labels.json").read_bytes() == before
