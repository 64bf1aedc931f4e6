"""`train --resume` (issue 37): a killed run continues from its last epoch's checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fashionnet import TrainConfig, train
from fashionnet.errors import FashionNetError
from fashionnet.training import _SaveEachEpoch, checkpoint_folder, work_folder


class Killed(BaseException):
    """Stands for SIGKILL: nothing of ours catches it."""


def _config(tiny_dataset, **changes) -> TrainConfig:
    settings = {"epochs": 3, "input_size": 32, "batch_size": 16, "cache": False,
                "backbone": "scratch", **changes}
    return TrainConfig(dataset=str(tiny_dataset), **settings)


def test_a_run_killed_after_epoch_2_resumes_at_epoch_3_with_its_optimizer(
        tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen: list[tuple[int, int]] = []
    real = _SaveEachEpoch.on_epoch_end

    def recording(self, epoch, logs=None):
        real(self, epoch, logs)
        seen.append((epoch, int(self.model.optimizer.iterations.numpy())))
        if crash and epoch == 1:
            raise Killed

    monkeypatch.setattr(_SaveEachEpoch, "on_epoch_end", recording)
    crash = True
    with pytest.raises(Killed):
        train(_config(tiny_dataset), out, verbose=0)
    assert not out.exists() and (checkpoint_folder(out) / "state.json").is_file()
    steps = seen[0][1]
    assert seen == [(0, steps), (1, 2 * steps)]
    crash = False
    seen.clear()
    result = train(_config(tiny_dataset), out, verbose=0, resume=True)
    assert seen == [(2, 3 * steps)]  # epoch 3 only, the optimizer's step count went on
    assert result.metrics["epochs_run"] == 3
    history = (out / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    assert not work_folder(out).exists()  # removed once the bundle is written


def test_resume_of_a_finished_run_trains_nothing(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(_config(tiny_dataset, epochs=1), out, verbose=0)
    before = (out / "model.keras").read_bytes()
    monkeypatch.setattr("keras.Model.fit", lambda *a, **k: pytest.fail("trained again"))
    result = train(_config(tiny_dataset, epochs=1), out, verbose=0, resume=True)
    assert result.bundle.path == out and (out / "model.keras").read_bytes() == before
    with pytest.raises(FashionNetError, match="another configuration"):
        train(_config(tiny_dataset, epochs=2), out, verbose=0, resume=True)


def _killed_after_epoch_1(tiny_dataset, out, monkeypatch) -> None:
    """A run killed right after its first epoch's checkpoint."""
    real = _SaveEachEpoch.on_epoch_end

    def once(self, epoch, logs=None):
        real(self, epoch, logs)
        raise Killed

    monkeypatch.setattr(_SaveEachEpoch, "on_epoch_end", once)
    with pytest.raises(Killed):
        train(_config(tiny_dataset), out, verbose=0)
    monkeypatch.undo()


def test_a_checkpoint_of_other_settings_is_refused(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killed_after_epoch_1(tiny_dataset, out, monkeypatch)
    state = json.loads((checkpoint_folder(out) / "state.json").read_text())
    assert state["epochs_done"] == 1 and "config" in state
    with pytest.raises(FashionNetError, match="another configuration"):
        train(_config(tiny_dataset, learning_rate=5e-4), out, verbose=0, resume=True)


def test_a_checkpoint_holds_no_pickle(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killed_after_epoch_1(tiny_dataset, out, monkeypatch)
    archives = list(checkpoint_folder(out).glob("*.npz"))
    assert archives
    for archive in archives:
        with np.load(archive, allow_pickle=False) as data:  # raises on an object array
            assert all(data[k].dtype != object for k in data.files)
