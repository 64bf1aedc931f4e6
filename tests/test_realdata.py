"""Integration on the real recipe dataset (../shared); skipped cleanly when it is absent."""

import json

import pytest

from fashionnet.cli import main
from fashionnet.data.images import decode_many
from fashionnet.data.sources import read_folders
from tests.conftest import FASHION, FULLSIZE, requires_fashion

pytestmark = [requires_fashion, pytest.mark.realdata]


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory):
    """12 images of each of the 7 folders, as a JSONL manifest pointing into ../shared.

    The dataset is linked in as ``fashion/``; its paths resolve outside the manifest's folder,
    so training takes --allow-outside (issue 38: confinement is checked on resolved paths).
    """
    path = tmp_path_factory.mktemp("real") / "sample.jsonl"
    (path.parent / "fashion").symlink_to(FASHION.resolve(), target_is_directory=True)
    lines = []
    for folder in sorted(p for p in FASHION.iterdir() if p.is_dir()):
        color, category = folder.name.split("_")
        for image in sorted(folder.iterdir())[:12]:
            lines.append(json.dumps({"path": f"fashion/{folder.name}/{image.name}",
                                     "color": color, "category": category}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_real_file_decodes():
    records = read_folders(FASHION)
    assert len(records) == 2518
    decoded = decode_many([r.path for r in records], 96, progress=False, cache=False)
    assert decoded.failures == [] and decoded.images.shape == (2518, 96, 96, 3)


@pytest.mark.skipif(not FULLSIZE.is_dir(), reason="full-size sample not present")
def test_full_size_photos_decode():
    records = read_folders(FULLSIZE)
    decoded = decode_many([r.path for r in records], 96, progress=False, cache=False)
    assert decoded.failures == [] and len(decoded.images) == len(records)


def test_train_one_epoch_and_classify_real_photos(sample_manifest, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(sample_manifest), "--epochs", "1", "--output",
                 str(run), "--quiet", "--no-cache", "--allow-outside"]) == 0
    labels = json.loads((run / "labels.json").read_text())
    assert labels["heads"][0]["classes"] == ["black", "blue", "red"]
    assert labels["heads"][1]["classes"] == ["dress", "jeans", "shirt", "shoes"]
    capsys.readouterr()
    photo = sorted((FASHION / "red_dress").iterdir())[-1]
    assert main(["classify", "--model", str(run), str(photo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split(":")[0] == "color" and out[1].split(":")[0] == "category"
