"""Issue 5: three heads, one multi-label, 20 % missing labels per head, from a manifest."""

import csv
import json

import numpy as np
import pytest

from fashionnet import TrainConfig, load, train
from fashionnet.cli import main
from fashionnet.heads import HeadSpec

TAGS = {"black": ["dark"], "red": ["warm", "bright"], "blue": ["cool"], "green": ["cool", "bright"]}


@pytest.fixture(scope="module")
def manifest(tiny_dataset, tmp_path_factory):
    rng = np.random.default_rng(1)
    path = tmp_path_factory.mktemp("manifest") / "labels.csv"
    # The images are linked in from elsewhere: paths resolve outside the manifest's folder,
    # which takes allow_outside (issue 38: confinement is checked on resolved paths).
    (path.parent / "images").symlink_to(tiny_dataset, target_is_directory=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "color", "category", "tags"])
        for image in sorted(tiny_dataset.rglob("*.*")):
            color, category = image.parent.name.split("_")
            row = [color, category, "|".join(TAGS[color])]
            row = ["" if rng.random() < 0.2 else v for v in row]
            writer.writerow([f"images/{image.relative_to(tiny_dataset).as_posix()}", *row])
    return path


def test_train_three_heads_with_missing_labels_and_round_trip(manifest, tmp_path):
    config = TrainConfig(dataset=str(manifest), epochs=2, input_size=32, batch_size=16,
                         cache=False, allow_outside=True, backbone="scratch",
                         heads=[HeadSpec("color", branch="color"),
                                             HeadSpec("category"),
                                             HeadSpec("tags", kind="multi", branch="shared",
                                                      class_weights="balanced")])
    result = train(config, tmp_path / "run", verbose=0)
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert [h["name"] for h in labels["heads"]] == ["color", "category", "tags"]
    assert labels["heads"][2]["classes"] == ["bright", "cool", "dark", "warm"]
    assert set(result.metrics["test"]["heads"]) == {"color", "category", "tags"}
    first_image = manifest.parent / next(csv.DictReader(manifest.open()))["path"]
    prediction = load(tmp_path / "run", backend="keras").predict_files([first_image])[0]
    assert isinstance(prediction.heads["tags"].label, list)
    assert set(prediction.heads["tags"].probabilities) == {"bright", "cool", "dark", "warm"}


def test_config_file_and_cli_print_multi_label_heads_as_lists(manifest, tmp_path, capsys,
                                                              tiny_dataset):
    config = tmp_path / "fn.toml"
    assert main(["init-config", "--dataset", str(manifest), "--multi", "tags",
                 "--output", str(config), "--allow-outside"]) == 0
    text = config.read_text()
    assert 'name = "tags"' in text and 'kind = "multi"' in text and "unlabelled" in text
    code = main(["train", "--config", str(config), "--epochs", "1", "--input-size", "32",
                 "--output", str(tmp_path / "run"), "--quiet", "--no-cache", "--backbone",
                 "scratch"])
    assert code == 0
    capsys.readouterr()
    image = next(iter(sorted(tiny_dataset.rglob("*.jpg"))))
    assert main(["classify", "--model", str(tmp_path / "run"), str(image)]) == 0
    out = capsys.readouterr().out
    tags_line = next(line for line in out.splitlines() if line.startswith("tags:"))
    assert tags_line.startswith("tags: [")
