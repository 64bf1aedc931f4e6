"""`fashionnet tune` (issue 37): two tiny trials on generated data write a loadable TOML."""

from __future__ import annotations

import csv

import pytest

from fashionnet.config import SETTINGS, TrainConfig, search_space
from fashionnet.config_template import config_to_toml
from fashionnet.errors import FashionNetError


def test_the_search_space_is_declared_on_the_settings():
    space = search_space()
    assert space and all(SETTINGS[name].search == spec for name, spec in space.items())
    assert search_space(["learning_rate"]) == {"learning_rate": SETTINGS["learning_rate"].search}
    with pytest.raises(FashionNetError, match="cannot tune"):
        search_space(["seed"])


def test_config_to_toml_reads_back_to_the_same_settings(tmp_path, tiny_dataset):
    from fashionnet.heads import HeadSpec

    config = TrainConfig(dataset=str(tiny_dataset), learning_rate=4e-4, recolor=0.3,
                         holdout=["red_shoes"], heads=[
                             HeadSpec("color", branch="color", class_weights={"red": 2.0}),
                             HeadSpec("category")])
    path = tmp_path / "c" / "best.toml"
    path.parent.mkdir()
    path.write_text(config_to_toml(config, relative_to=path.parent, header="a\nb"))
    again = TrainConfig.from_toml(path)
    assert again.to_dict() == config.to_dict()


@pytest.mark.slow
def test_two_tiny_trials_write_a_toml_that_train_accepts(tiny_dataset, tmp_path, capsys):
    pytest.importorskip("ray")
    from fashionnet.cli import main

    out = tmp_path / "tune"
    code = main(["tune", "--dataset", str(tiny_dataset), "--output", str(out), "--trials", "2",
                 "--epochs", "2", "--input-size", "32", "--batch-size", "16", "--no-cache",
                 "--settings", "learning_rate,recolor", "--tune-holdout", "red_shoes",
                 "--max-concurrent", "2", "--backbone", "scratch"])
    assert code == 0, capsys.readouterr().err
    config = TrainConfig.from_toml(out / "best.toml")
    assert config.epochs == 2 and config.holdout == []  # the tuning holdout is not baked in
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"learning_rate", "recolor", "heldout_exact_match"} <= set(rows[0])
    lo, hi = SETTINGS["learning_rate"].search[1:]
    assert all(lo <= float(r["learning_rate"]) <= hi for r in rows if r["status"] == "ok")
    assert "best heldout_exact_match" in capsys.readouterr().out
    assert not (tmp_path / ".tune.tune").exists()
