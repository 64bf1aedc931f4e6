"""`fashionnet doctor` on tiny generated data: a planted duplicate, a planted label error, an
unreadable file, hostile inputs; and a clean one-line error when the extra is absent."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionnet.cli import main
from fashionnet.errors import FashionNetError
from tests.conftest import solid


@pytest.fixture
def doctor_libs():
    """Skip cleanly where the ``doctor`` extra is not installed."""
    pytest.importorskip("cleanlab")
    pytest.importorskip("cleanvision")
    pytest.importorskip("sklearn")
    pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> Path:
    """3 colours x 2 categories x 4 garments, then: a byte copy of a blue dress filed under
    red_dress (exact duplicate whose colour labels disagree), a text file named .png, a JPEG
    cut in half, and an all-black image."""
    from fashionnet.data.synthetic import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("dirty") / "data", per_combination=4, size=48,
                         colors=("black", "blue", "red"), categories=("dress", "shoes"))
    shutil.copy(root / "blue_dress" / "0000.jpg", root / "red_dress" / "copy.jpg")
    (root / "blue_shoes" / "notes.png").write_text("this is not an image\n")
    whole = (root / "black_shoes" / "0000.jpg").read_bytes()
    (root / "black_shoes" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    solid(root / "black_dress" / "night.png", (0, 0, 0), size=(48, 48))
    # A cut-out product photo: a dark garment on a transparent backdrop (not a dark image).
    cutout = np.zeros((48, 48, 4), np.uint8)
    cutout[18:30, 18:30] = (20, 20, 20, 255)
    Image.fromarray(cutout, "RGBA").save(root / "black_shoes" / "cutout.png")
    return root


@pytest.fixture(scope="module")
def report(dirty, tmp_path_factory) -> Path:
    pytest.importorskip("cleanlab")
    pytest.importorskip("cleanvision")
    out = tmp_path_factory.mktemp("doctor") / "report"
    assert main(["doctor", "--dataset", str(dirty), "--output", str(out), "--quiet"]) == 0
    return out


def _rows(report: Path) -> list[dict]:
    with (report / "issues.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _flagged(rows: list[dict], issue: str, head: str | None = None) -> set[str]:
    return {r["path"] for r in rows if r["issue"] == issue and (head is None or r["head"] == head)}


def test_unreadable_files_are_rows_not_crashes(doctor_libs, report):
    rows = _rows(report)
    assert {"blue_shoes/notes.png", "black_shoes/cut.jpg"} <= _flagged(rows, "unreadable")
    detail = next(r["detail"] for r in rows if r["path"] == "blue_shoes/notes.png")
    assert "not an image" in detail


def test_planted_duplicate_and_its_label_conflict(doctor_libs, report):
    rows = _rows(report)
    pair = {"blue_dress/0000.jpg", "red_dress/copy.jpg"}
    assert pair <= _flagged(rows, "exact_duplicate")
    assert pair == _flagged(rows, "duplicate_label_conflict", "color")
    assert not _flagged(rows, "duplicate_label_conflict", "category")  # both are dresses


def test_image_quality_from_cleanvision(doctor_libs, report):
    rows = _rows(report)
    assert "black_dress/night.png" in _flagged(rows, "dark")
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_label_counts_and_combination_matrix(doctor_libs, report):
    summary = json.loads((report / "issues.json").read_text())
    assert summary["label_counts"]["color"]["red"] == 9  # 8 garments + the planted copy
    (matrix,) = summary["combinations"]
    assert matrix["heads"] == ["color", "category"]
    assert matrix["empty"] == []
    assert summary["model"] is None
    text = (report / "report.md").read_text()
    assert "## Combinations: color × category" in text and "## unreadable" in text


def test_html_is_one_self_contained_page(doctor_libs, report):
    page = (report / "report.html").read_text()
    assert "data:image/jpeg;base64," in page
    assert "<script" not in page and "src='http" not in page and 'src="http' not in page
    assert page.index("id='unreadable'") < page.index("id='exact_duplicate'") < page.index("id='dark'")


def test_manifest_feeds_back_with_exclude(doctor_libs, report):
    from fashionnet.data.sources import read_dataset

    with (report / "manifest.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    excluded = {Path(r["path"]).name: r["exclude"] for r in table if r["exclude"]}
    assert excluded["notes.png"] == "unreadable"
    assert "duplicate_label_conflict:color" in excluded["copy.jpg"]
    records, heads = read_dataset(report / "manifest.csv", allow_outside=True)
    assert heads == ["color", "category"]  # exclude is not a head
    assert len(records) == len(table) - len(excluded)
    assert all(r.path.is_file() for r in records)


def test_existing_report_is_kept_without_overwrite(doctor_libs, dirty, report, capsys):
    before = (report / "issues.csv").read_bytes()
    assert main(["doctor", "--dataset", str(dirty), "--output", str(report), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--overwrite" in err
    assert (report / "issues.csv").read_bytes() == before


def test_planted_label_errors_found_held_out_and_cross_validated(doctor_libs, tmp_path):
    """Three well-separated colour clusters; two images carry the wrong colour, one in the
    run's held-out split (its own prediction), one in training (cross-validated)."""
    from fashionnet.bundle import Bundle
    from fashionnet.data.images import Preprocessing
    from fashionnet.doctor.model import CROSS_VALIDATED, HELD_OUT, find_with_model
    from fashionnet.heads import HeadSpec

    rng = np.random.default_rng(0)
    classes = ["black", "blue", "red"]
    truth = np.repeat(np.arange(3), 20)
    features = rng.normal(size=(60, 8)) + 10 * np.eye(3, 8)[truth]
    probs = np.full((60, 3), 0.02)
    probs[np.arange(60), truth] = 0.96
    labels = [{"color": classes[t]} for t in truth]
    labels[3] = {"color": "red"}  # truly black, held out
    labels[30] = {"color": "black"}  # truly blue, in training
    features[30] = 14 * np.eye(3, 8)[1]  # a clear blue: past the class's mean confidence
    keys = [f"img{i}.jpg" for i in range(60)]
    split_of = {k: ("test" if i % 2 else "train") for i, k in enumerate(keys)}  # 3: test
    bundle = Bundle(tmp_path, [HeadSpec("color", classes, branch="color")], Preprocessing(32))
    found = find_with_model(bundle, [probs], [features], list(range(60)), labels, keys, split_of,
                            progress=False)
    flagged = {i.path: i for i in found.issues if i.issue == "label_issue"}
    assert {"img3.jpg", "img30.jpg"} <= set(flagged)
    assert len(flagged) <= 4
    assert (flagged["img3.jpg"].source, flagged["img3.jpg"].suggested) == (HELD_OUT, "black")
    assert (flagged["img30.jpg"].source, flagged["img30.jpg"].suggested) == (CROSS_VALIDATED, "blue")
    assert found.sources["color"] == {HELD_OUT: 30, CROSS_VALIDATED: 30}
    assert any(i.issue == "ambiguous" for i in found.issues)


@pytest.mark.slow
def test_doctor_with_a_trained_run(doctor_libs, request, tiny_dataset, tmp_path, capsys):
    tiny_bundle = request.getfixturevalue("tiny_bundle")  # trained only when not skipped
    out = tmp_path / "report"
    assert main(["doctor", "--dataset", str(tiny_dataset), "--model", str(tiny_bundle.bundle.path),
                 "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "issues.json").read_text())
    assert summary["model"] == str(tiny_bundle.bundle.path)
    for head in ("color", "category"):
        sources = summary["out_of_sample_sources"][head]
        assert sources["held-out"] > 0 and sources["cross-validated"] > 0
        assert sum(sources.values()) == 96
    assert {r["source"] for r in summary["issues"] if r["issue"] == "ambiguous"} <= {
        "held-out", "cross-validated"}
    assert "cross-validated on its embeddings" in (out / "report.md").read_text()
    assert "images;" in capsys.readouterr().out


def test_model_of_another_dataset_is_refused(doctor_libs, request, tmp_path, capsys):
    tiny_bundle = request.getfixturevalue("tiny_bundle")
    for i, color in enumerate([(200, 0, 0), (0, 0, 200)]):
        solid(tmp_path / "other" / "red_dress" / f"photo{i}.png", color)
    assert main(["doctor", "--dataset", str(tmp_path / "other"), "--model",
                 str(tiny_bundle.bundle.path),
                 "--output", str(tmp_path / "r"), "--quiet"]) == 2
    assert "split.json" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_malformed_manifest_is_one_line_naming_the_file(doctor_libs, tmp_path, capsys):
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,color\na.jpg,red\nb.jpg,blue,extra\n")
    assert main(["doctor", "--dataset", str(manifest), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "labels.csv: line 3" in err
    assert not (tmp_path / "r").exists()


def test_missing_dataset_and_all_unreadable(doctor_libs, tmp_path, capsys):
    assert main(["doctor", "--dataset", str(tmp_path / "nope"), "--output", str(tmp_path / "r")]) == 2
    assert "nope" in capsys.readouterr().err
    (tmp_path / "d" / "red_dress").mkdir(parents=True)
    (tmp_path / "d" / "red_dress" / "a.jpg").write_bytes(b"\xff\xd8garbage")
    assert main(["doctor", "--dataset", str(tmp_path / "d"), "--output", str(tmp_path / "r"),
                 "--quiet"]) == 2
    assert "no readable images" in capsys.readouterr().err


def test_without_the_extra_one_line_names_the_install(monkeypatch, tmp_path, capsys):
    """Runs whether or not the extra is installed: the check is made before any import."""
    import fashionnet.extras as extras

    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m != "cleanlab" and real(m))
    assert main(["doctor", "--dataset", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fashionnet doctor needs cleanlab")
    assert err.endswith('not installed: pip install "fashionnet[doctor]"') and "\n" not in err
    from fashionnet.doctor import run_doctor

    with pytest.raises(FashionNetError, match=r"fashionnet\[doctor\]"):
        run_doctor(tmp_path, tmp_path / "r")


def test_png_cards_have_thumbnails_and_the_page_says_what_next(doctor_libs, report):
    page = (report / "report.html").read_text()
    dark = page[page.index("id='dark'"):]
    dark = dark[:dark.index("<h2", 10)]
    assert "night.png" in dark and "data:image/jpeg;base64," in dark and "(no image)" not in dark
    steps = page[page.index("id='next'"):]
    assert "manifest.csv" in steps and "exclude" in steps and "--allow-outside" in steps
    assert "What to do next" in (report / "report.md").read_text()


def test_a_transparent_cutout_is_not_called_dark(doctor_libs, report):
    assert not any(p.endswith("cutout.png") for p in _flagged(_rows(report), "dark"))
    assert any(p.endswith("night.png") for p in _flagged(_rows(report), "dark"))


def test_a_png_thumbnail_in_a_fresh_process(tmp_path):
    """The report opened thumbnails with a format list naming MPO, which this Pillow does not
    register: every card came out as "(no image)"."""
    import subprocess
    import sys

    solid(tmp_path / "a.png", (10, 200, 10), size=(64, 64))
    code = ("import sys\nfrom pathlib import Path\nfrom fashionnet.doctor.report import "
            "thumbnail\nsys.exit(0 if thumbnail(Path(sys.argv[1])) else 1)\n")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.png")]).returncode == 0
