"""The command line: happy paths on the tiny bundle, and one clear line for each user error."""

import json

import numpy as np
import pytest

from fashionnet.cli import main
from tests.conftest import solid


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_classify_prints_one_line_per_head(tiny_bundle, tiny_dataset, capsys):
    image = sorted((tiny_dataset / "red_dress").iterdir())[0]
    code, out, _ = run(capsys, "classify", "--model", tiny_bundle.bundle.path, image)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("color: ") and lines[0].endswith("%)")
    assert lines[1].startswith("category: ")


def test_classify_json_folder_and_annotate(tiny_bundle, tiny_dataset, capsys, tmp_path):
    folder = tiny_dataset / "blue_jeans"
    code, out, _ = run(capsys, "classify", "--model", tiny_bundle.bundle.path, folder, "--json",
                       "--annotate", tmp_path / "ann")
    results = json.loads(out)
    assert code == 0 and len(results) == 6
    probs = results[0]["heads"]["color"]["probabilities"]
    assert set(probs) == {"black", "blue", "green", "red"}
    assert abs(sum(probs.values()) - 1) < 1e-3
    run(capsys, "classify", "--model", tiny_bundle.bundle.path, folder / "0000.jpg",
        "--annotate", tmp_path / "ann")
    from PIL import Image

    with Image.open(tmp_path / "ann" / "0000.png") as im:
        assert im.width == 400
        pixels = np.asarray(im.convert("RGB").crop((0, 0, 200, 60))).reshape(-1, 3).tolist()
        assert any(g > 150 and r < 80 and b < 80 for r, g, b in pixels)  # green text


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "dataset not found"),
    (lambda p: solid(p / "data" / "blackjeans" / "a.jpg", "black"), "blackjeans: folder name"),
    (lambda p: (p / "data" / "red_dress").mkdir(parents=True), "no image files"),
    (lambda p: [solid(p / "data" / f"red_{c}" / "a.jpg", "red") for c in ("dress", "shoes")],
     "'color' has only one class"),
])
def test_train_errors_are_one_line(tmp_path, capsys, setup, message):
    setup(tmp_path)
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "data", "--output",
                       tmp_path / "run", "--epochs", "1", "--input-size", "32")
    assert code == 2
    lines = [line for line in err.splitlines() if not line.startswith("found ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_non_image_files_are_skipped_with_a_warning(tmp_path, capsys):
    for c in ("red_dress", "blue_shoes"):
        for i in range(3):
            solid(tmp_path / "data" / c / f"{i}.jpg", "red" if "red" in c else "blue")
    (tmp_path / "data" / "red_dress" / "notes.txt").write_text("not an image")  # left out
    (tmp_path / "data" / "red_dress" / "broken.jpg").write_text("not an image")
    code, out, err = run(capsys, "train", "--dataset", tmp_path / "data", "--output",
                         tmp_path / "run", "--epochs", "1", "--input-size", "32", "--quiet",
                         "--no-cache", "--no-dedupe", "--split", "recipe", "--backbone", "scratch")
    assert code == 0, err
    assert "found 7 images in 2 folders (1 not image file(s): 1 .txt, left out)" in err
    assert "broken.jpg: not an image" in err and "skipped 1 unreadable file(s)" in err
    assert "notes.txt" not in err
    code, _, err = run(capsys, "train", "--dataset", tmp_path / "data", "--output",
                       tmp_path / "run2", "--strict", "--no-cache")
    assert code == 2 and "broken.jpg: not an image" in err


def test_classify_errors(tiny_bundle, tmp_path, capsys):
    (tmp_path / "x.jpg").write_text("text")
    code, _, err = run(capsys, "classify", "--model", tiny_bundle.bundle.path, tmp_path / "x.jpg")
    assert code == 1 and "x.jpg: not an image" in err
    code, _, err = run(capsys, "classify", "--model", tmp_path, tmp_path / "x.jpg")
    assert code == 2 and "labels.json: missing" in err
    code, _, err = run(capsys, "classify", "--model", tiny_bundle.bundle.path, tmp_path / "nope")
    assert code == 2 and "no such file" in err


def test_bad_config_is_named(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("epochs = 'many'\nbogus = 1\n")
    code, _, err = run(capsys, "train", "--config", tmp_path / "c.toml", "--output", tmp_path / "r")
    assert code == 2 and "c.toml: unknown setting(s) ['bogus']" in err


def test_init_config_takes_the_allow_outside_it_recommends(tmp_path, capsys):
    from fashionnet.config import TrainConfig

    image = solid(tmp_path / "elsewhere" / "a.jpg", (200, 10, 10))
    manifest = tmp_path / "m" / "labels.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,color\n{image},red\n")
    out = tmp_path / "m" / "fashionnet.toml"
    code, _, err = run(capsys, "init-config", "--dataset", manifest, "--output", out)
    assert code == 2 and "--allow-outside" in err
    code, _, err = run(capsys, "init-config", "--dataset", manifest, "--output", out,
                       "--allow-outside")
    assert code == 0, err
    assert TrainConfig.from_toml(out).allow_outside is True
