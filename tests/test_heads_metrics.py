import math

import numpy as np
import pytest

from fashionnet.data.sources import Record
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec, fit_classes
from fashionnet.metrics import (
    accuracy,
    apply_temperature,
    average_precision,
    bootstrap_ci,
    confusion_matrix,
    exact_match,
    expected_calibration_error,
    fit_temperature,
    harmonic_mean,
    per_class_report,
)


def test_encode_decode_single_multi_and_missing():
    color = HeadSpec("color", ["black", "red"])
    tags = HeadSpec("tags", ["a", "b", "c"], kind="multi")
    assert color.encode(["red", None]).tolist() == [[0, 1], [-1, -1]]
    assert tags.encode([frozenset({"a", "c"})]).tolist() == [[1, 0, 1]]
    assert color.decode(np.array([[0.2, 0.8]])) == ["red"]
    assert tags.decode(np.array([[0.9, 0.1, 0.6]])) == [frozenset({"a", "c"})]
    with pytest.raises(FashionNetError, match="unknown label 'blue'"):
        color.encode(["blue"])


def test_fit_classes_refuses_unlearnable_heads():
    records = [Record("a", {"color": "red", "category": None}),
               Record("b", {"color": "red", "category": None})]
    with pytest.raises(FashionNetError, match="'color' has only one class"):
        fit_classes([HeadSpec("color")], records)
    with pytest.raises(FashionNetError, match="'category' has no labelled examples"):
        fit_classes([HeadSpec("category")], records)


def test_accuracy_and_exact_match_skip_unknown_rows():
    t1 = np.array([[1, 0], [0, 1], [-1, -1], [1, 0]], float)
    p1 = np.array([[.9, .1], [.8, .2], [.5, .5], [.6, .4]])
    t2 = np.array([[0, 1], [0, 1], [1, 0], [-1, -1]], float)
    p2 = np.array([[.1, .9], [.3, .7], [.2, .8], [.5, .5]])
    assert accuracy(t1, p1) == pytest.approx(2 / 3)
    # rows: 0 both right; 1 head1 wrong; 2 head2 wrong (head1 unknown); 3 head1 right only
    assert exact_match([t1, t2], [p1, p2], [False, False]) == pytest.approx(2 / 4)


def test_multi_label_exact_set_and_average_precision():
    t = np.array([[1, 0, 1], [0, 1, 0]], float)
    p = np.array([[.9, .2, .7], [.6, .8, .1]])
    assert accuracy(t, p, multi=True) == 0.5
    assert average_precision(np.array([1, 0, 1, 0]), np.array([.9, .8, .7, .1])) == \
        pytest.approx((1 + 2 / 3) / 2)


def test_harmonic_mean_confusion_and_report():
    assert harmonic_mean(0.9, 0.6) == pytest.approx(0.72)
    assert harmonic_mean(0.0, 0.0) == 0.0 and math.isnan(harmonic_mean(math.nan, 1))
    m = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    rep = per_class_report(m, ["a", "b", "c"])
    assert rep["classes"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                   "support": 2}
    assert rep["classes"]["b"]["precision"] == 0.5


def test_ece_and_temperature_scaling():
    t = np.eye(2)[[0, 0, 0, 0, 1]]
    p = np.array([[.9, .1]] * 5)  # 90% confident, 80% right
    assert expected_calibration_error(t, p) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (2000, 3))
    truth = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in logits])
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    temp = fit_temperature(np.eye(3)[truth], overconfident)
    assert temp == pytest.approx(3.0, rel=0.15)
    fixed = apply_temperature(overconfident, temp)
    assert expected_calibration_error(np.eye(3)[truth], fixed) < \
        expected_calibration_error(np.eye(3)[truth], overconfident)


def test_bootstrap_ci_brackets_the_mean():
    values = np.array([1] * 80 + [0] * 20)
    lo, hi = bootstrap_ci(values)
    assert lo < 0.8 < hi and hi - lo < 0.2
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
