"""Issue 12, a new user's first hour: each test failed before its fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fashionnet.cli import main
from fashionnet.errors import FashionNetError
from tests.conftest import solid

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "black": (10, 10, 10)}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def occasions_manifest(folder: Path, kind: str = "csv") -> Path:
    """A manifest with a multi-label column written both ways round and a blank cell."""
    rows = []
    for i in range(12):
        color = ["red", "blue", "black"][i % 3]
        solid(folder / "img" / f"{i}.png", COLORS[color], size=(24, 24))
        occasions = ["casual|party", "party|casual", "work", ""][i % 4]
        rows.append((f"img/{i}.png", color, ["dress", "shoes"][i % 2], occasions))
    if kind == "csv":
        path = folder / "labels.csv"
        path.write_text("path,color,category,occasions\n"
                        + "".join(",".join(r) + "\n" for r in rows))
    else:
        path = folder / "labels.jsonl"
        path.write_text("\n".join(json.dumps({
            "path": p, "color": c, "category": g,
            "occasions": [x for x in o.split("|") if x] or None}) for p, c, g, o in rows))
    return path


# -- 1. --multi without --heads --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_multi_is_honoured_without_heads(tmp_path, kind):
    from fashionnet.cli import _config_from_args, build_parser
    from fashionnet.training import load_dataset

    manifest = occasions_manifest(tmp_path, kind)
    args = build_parser().parse_args(["train", "--dataset", str(manifest), "--multi",
                                      "occasions", "--output", str(tmp_path / "run")])
    data = load_dataset(_config_from_args(args), progress=False)
    heads = {h.name: h for h in data.heads}
    assert list(heads) == ["color", "category", "occasions"]
    assert heads["occasions"].multi and heads["occasions"].classes == ["casual", "party", "work"]
    assert not heads["color"].multi


def test_multi_naming_an_absent_head_is_refused(tmp_path):
    from fashionnet import TrainConfig
    from fashionnet.training import load_dataset

    manifest = occasions_manifest(tmp_path)
    with pytest.raises(FashionNetError, match=r"multi-label head\(s\) \['ocasions'\] not found"):
        load_dataset(TrainConfig(dataset=str(manifest), multi=["ocasions"]), progress=False)


# -- 2. nested folders, and what was found ---------------------------------------------------

def test_nested_folders_are_read_and_counted(tmp_path, caplog):
    from fashionnet.data.sources import read_folders
    from fashionnet.inference import expand_inputs

    solid(tmp_path / "red_dress" / "a.jpg", "red")
    solid(tmp_path / "red_dress" / "2023" / "summer" / "b.jpg", "red")
    solid(tmp_path / "blue_shoes" / "c.png", "blue")
    (tmp_path / "blue_shoes" / "README.txt").write_text("where these came from")
    (tmp_path / "blue_shoes" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.INFO, logger="fashionnet"):
        records = read_folders(tmp_path)
    assert sorted(r.path.name for r in records) == ["a.jpg", "b.jpg", "c.png"]
    assert "found 3 images in 2 folders (1 not image file(s): 1 .txt, left out)" in caplog.text
    # classify reads the same files from the same folder
    assert sorted(p.name for p in expand_inputs([tmp_path])) == ["a.jpg", "b.jpg", "c.png"]


# -- 11. messages ----------------------------------------------------------------------------

def test_wrong_head_column_lists_the_columns(tmp_path):
    from fashionnet.data.sources import read_manifest

    manifest = occasions_manifest(tmp_path)
    with pytest.raises(FashionNetError, match=r"labels.csv: no column 'colour' for head "
                                              r"'colour' \(columns: path, color, category, "
                                              r"occasions\)"):
        read_manifest(manifest, heads=["colour", "category"])
