import json

import pytest

from fashionnet.data.sources import read_dataset, read_folders, read_manifest
from fashionnet.errors import FashionNetError
from tests.conftest import solid


def test_folder_names_give_one_label_per_head(tmp_path):
    solid(tmp_path / "black_jeans" / "a.jpg", "black")
    solid(tmp_path / "red_dress" / "b.png", "red")
    records = read_folders(tmp_path)
    assert [r.labels for r in records] == [{"color": "black", "category": "jeans"},
                                           {"color": "red", "category": "dress"}]


def test_three_part_folder_names_with_custom_heads(tmp_path):
    solid(tmp_path / "red_cotton_shirt" / "a.jpg", "red")
    records, names = read_dataset(tmp_path, heads=["color", "material", "category"])
    assert names == ["color", "material", "category"]
    assert records[0].labels == {"color": "red", "material": "cotton", "category": "shirt"}


def test_folder_with_wrong_number_of_parts_is_named(tmp_path):
    solid(tmp_path / "black_jeans" / "a.jpg", "black")
    solid(tmp_path / "blackjeans" / "a.jpg", "black")
    with pytest.raises(FashionNetError, match=r"blackjeans: folder name has 1 part"):
        read_folders(tmp_path)


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(FashionNetError, match="not found"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(FashionNetError, match="no sub-folders"):
        read_folders(tmp_path)
    (tmp_path / "red_dress").mkdir()
    with pytest.raises(FashionNetError, match="no image files"):
        read_folders(tmp_path)


def test_csv_manifest_with_unknown_and_multi_labels(tmp_path):
    solid(tmp_path / "img" / "a.jpg", "red")
    (tmp_path / "m.csv").write_text(
        "path,color,occasions\nimg/a.jpg,red,party|work\nimg/a.jpg,,\n")
    records, names = read_manifest(tmp_path / "m.csv", multi_heads=["occasions"])
    assert names == ["color", "occasions"]
    assert records[0].labels == {"color": "red", "occasions": frozenset({"party", "work"})}
    assert records[1].labels == {"color": None, "occasions": None}
    assert records[0].path == (tmp_path / "img" / "a.jpg").resolve()


def test_json_and_jsonl_manifests(tmp_path):
    rows = [{"path": "a.jpg", "color": "red", "tags": ["x", "y"]},
            {"path": "b.jpg", "color": None, "tags": []}]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("m.json", "m.jsonl"):
        records, _ = read_manifest(tmp_path / name, multi_heads=["tags"])
        assert records[0].labels["tags"] == frozenset({"x", "y"})
        assert records[1].labels["color"] is None


def test_manifest_errors_name_the_file(tmp_path):
    (tmp_path / "m.csv").write_text("file,color\na.jpg,red\n")
    with pytest.raises(FashionNetError, match=r"m.csv: no 'path' column"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(FashionNetError, match=r"bad.json: invalid JSON"):
        read_manifest(tmp_path / "bad.json")
