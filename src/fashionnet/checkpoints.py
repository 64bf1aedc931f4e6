"""Per-epoch training checkpoints: what `train --resume` and Ray Train workers continue from.

A checkpoint is a folder of NumPy archives and one JSON file, never a pickle: ``weights.npz``
(every model variable), ``optimizer.npz`` (Adam's moments and its step count, so the learning
rate schedule goes on where it stopped), ``best_weights.npz`` (the best epoch's weights, when
there is a validation split) and ``state.json`` (epochs done, their history, the best-epoch
scores, the configuration it belongs to). `write_checkpoint` writes it next to its final place
and renames it in: a kill at any instant leaves the previous checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from fashionnet.errors import FashionNetError
from fashionnet.files import read_json_file


def _arrays(path: Path) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]
    except (OSError, ValueError, KeyError) as exc:
        raise FashionNetError(f"{path}: not a readable checkpoint array file "
                              f"({' '.join(str(exc).split())[:160]})") from None


def save(model, best, history: dict, epochs_done: int, folder: Path,
         extra: dict | None = None) -> None:
    """A checkpoint: weights, optimizer state, best-epoch state, history. No pickle."""
    np.savez(folder / "weights.npz", *model.get_weights())
    np.savez(folder / "optimizer.npz",
             *[keras.ops.convert_to_numpy(v) for v in model.optimizer.variables])
    state: dict = {"epochs_done": epochs_done,
                   "history": {k: [float(x) for x in v] for k, v in history.items()},
                   **(extra or {})}
    if best is not None:
        state["best"] = {"scores": [float(s) for s in best.scores],
                         "key": [float(k) for k in best.best], "epoch": best.best_epoch}
        if best.best_weights is not None:
            np.savez(folder / "best_weights.npz", *best.best_weights)
    (folder / "state.json").write_text(json.dumps(state))


def read_state(folder: Path) -> dict:
    state = read_json_file(folder / "state.json", "checkpoint state")
    if not isinstance(state, dict) or not isinstance(state.get("epochs_done"), int):
        raise FashionNetError(f"{folder / 'state.json'}: not a fashionnet checkpoint state")
    return state


def restore(model, best, folder: Path) -> tuple[int, dict]:
    """Load a checkpoint written by `save` into a compiled model (inside the strategy's
    scope); returns the number of epochs already done and their history."""
    state = read_state(folder)
    weights = _arrays(folder / "weights.npz")
    if len(weights) != len(model.get_weights()):
        raise FashionNetError(f"{folder}: checkpoint has {len(weights)} weight arrays, the "
                              f"model {len(model.get_weights())}")
    model.set_weights(weights)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    saved = _arrays(folder / "optimizer.npz")
    if len(saved) != len(optimizer.variables):
        raise FashionNetError(f"{folder}: checkpoint has {len(saved)} optimizer variables, the "
                              f"model {len(optimizer.variables)}")
    for variable, value in zip(optimizer.variables, saved):
        variable.assign(value)
    if best is not None and "best" in state:
        best.scores = list(state["best"]["scores"])
        best.best = tuple(state["best"]["key"])
        best.best_epoch = int(state["best"]["epoch"])
        if (folder / "best_weights.npz").is_file():
            best.best_weights = _arrays(folder / "best_weights.npz")
    return int(state["epochs_done"]), state["history"]


def write_checkpoint(folder: Path, model, best, history: dict, epochs_done: int,
                     extra: dict | None = None) -> None:
    """`save` into ``folder`` atomically: a sibling temporary folder, then two renames."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save(model, best, history, epochs_done, tmp, extra)
    for name in os.listdir(tmp):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """``folder`` if it holds a complete checkpoint; else an aside copy that a kill between
    the two renames of `write_checkpoint` left (``NAME.old-PID``); else None."""
    folder = Path(folder)
    state = folder / "state.json"
    if state.exists() or state.is_symlink():  # a FIFO or a device is refused when read
        return folder
    asides = sorted(folder.parent.glob(f"{folder.name}.old-*"),
                    key=lambda p: p.stat().st_mtime, reverse=True) if folder.parent.is_dir() \
        else []
    for aside in asides:
        if (aside / "state.json").is_file():
            return aside
    return None
