"""Shared fixtures: tiny generated datasets and one tiny trained bundle reused by many tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
FASHION = SHARED / "fashion"
FULLSIZE = SHARED / "fashion-fullsize-sample"

requires_fashion = pytest.mark.skipif(not FASHION.is_dir(),
                                      reason="../shared/datasets/fashion not present")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FASHIONNET_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def solid(path: Path, color, size=(40, 40), fmt=None, mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt, **save)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """4 colours x 4 categories x 6 images of generated garments."""
    from fashionnet.data.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("tiny") / "data", per_combination=6, size=48)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tmp_path_factory):
    """A bundle trained 1 epoch at 32 px with one combination held out."""
    from fashionnet import TrainConfig, train

    config = TrainConfig(dataset=str(tiny_dataset), epochs=1, input_size=32, batch_size=16,
                         holdout=["red_shoes"], cache=False, backbone="scratch")
    return train(config, tmp_path_factory.mktemp("bundle") / "run", verbose=0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def two_colour_dataset(tmp_path_factory) -> dict[str, Path]:
    """Garments in black and red only (train), fresh black/red ones, and blue/green ones the
    model never sees: the colours it has no name for."""
    from fashionnet.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("two_colours")
    return {"train": write_dataset(root / "train", per_combination=16, size=48,
                                   colors=("black", "red")),
            "known": write_dataset(root / "known", per_combination=3, size=48, seed=6,
                                   colors=("black", "red")),
            "other": write_dataset(root / "other", per_combination=3, size=48, seed=5,
                                   colors=("blue", "green"))}


@pytest.fixture(scope="session")
def two_colour_bundle(two_colour_dataset, tmp_path_factory):
    """Trained on two colours, with a validation split big enough for out-of-set rules."""
    from fashionnet import TrainConfig, train

    config = TrainConfig(dataset=str(two_colour_dataset["train"]), epochs=8, input_size=32,
                         batch_size=16, val_fraction=0.3, cache=False, backbone="scratch")
    return train(config, tmp_path_factory.mktemp("two_colour_bundle") / "run", verbose=0)
