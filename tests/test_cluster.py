"""FashionNet on Ray (extra `cluster`): batch labelling with Ray Data, training with Ray Train.

Every test that needs Ray skips cleanly when the extra is absent. One local Ray instance of two
CPUs serves the module (started once, shut down after); the images are tiny and generated.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from fashionnet.data.sources import image_list
from fashionnet.errors import FashionNetError
from tests.conftest import solid


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    pytest.importorskip("ray.data")
    # The workers' decode cache is the tests' private one, as in-process (conftest).
    cache = str(tmp_path_factory.getbasetemp() / "cache")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"FASHIONNET_CACHE_DIR": cache}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """16 generated garments, one unreadable .jpg and a README that is no image."""
    from fashionnet.data.synthetic import write_dataset

    root = write_dataset(tmp_path_factory.mktemp("photos") / "in", per_combination=1, size=48)
    (root / "black_shirt" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "README.txt").write_text("not an image")
    return root


def _default_model() -> Path:
    from fashionnet.default_model import default_model_path

    return default_model_path()


def test_image_list_reads_folders_manifests_and_path_lists(tmp_path):
    a = solid(tmp_path / "img" / "a.png", (255, 0, 0))
    solid(tmp_path / "img" / "sub" / "b.jpg", (0, 0, 255))
    (tmp_path / "img" / "notes.md").write_text("x")
    assert image_list(tmp_path / "img") == [str(a), str(tmp_path / "img" / "sub" / "b.jpg")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nimg/a.png\n")  # no label column: fine for labelling
    assert image_list(manifest) == [str(a.resolve())]
    listing = tmp_path / "paths.txt"
    listing.write_text("# photos to label\nimg/a.png\n\ns3://bucket/x.jpg\n")
    assert image_list(listing) == [str(a.resolve()), "s3://bucket/x.jpg"]
    (tmp_path / "bad.csv").write_text("file\nimg/a.png\n")
    for bad, words in ((tmp_path / "nowhere", "no such folder"), (tmp_path / "bad.csv", "'path'")):
        with pytest.raises(FashionNetError, match=words) as info:
            image_list(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_missing_extra_is_one_line(monkeypatch):
    from fashionnet import extras

    monkeypatch.setattr(extras, "missing", lambda *modules: ["ray"])
    with pytest.raises(FashionNetError, match=r'pip install "fashionnet\[cluster\]"'):
        extras.require_cluster("fashionnet classify --engine ray")


def test_ray_labelling_writes_parquet_with_error_rows(ray_local, photos, tmp_path):
    import pyarrow.parquet as pq

    from fashionnet import load
    from fashionnet.cluster import label

    out = tmp_path / "labels"
    summary = label(_default_model(), photos, out, workers=1, batch_size=4)
    assert summary["images"] == 17 and summary["labelled"] == 16 and summary["errors"] == 1
    written = json.loads((out / "_summary.json").read_text())
    assert written["heads"]["color"]["classes"] == ["black", "blue", "red"]
    assert sum(written["heads"]["category"]["counts"].values()) == 16
    assert len(list(out.glob("*.parquet"))) >= 2  # shards, not one file
    table = pq.read_table(out).to_pandas().set_index("path")  # _summary.json is skipped
    assert len(table) == 17
    broken = table.loc[str(photos / "black_shirt" / "broken.jpg")]
    assert "broken.jpg: not an image" in broken["error"] and broken.isna()["color"]
    # The same answers as `fashionnet classify` (same decoding, model and calibration).
    ok = table[table["error"].isna()]
    expected = load(_default_model()).predict_files(list(ok.index))
    unknown = sum(p.heads["category"].unknown for p in expected)
    assert written["heads"]["category"]["counts"].get("(unknown)", 0) == unknown
    for path, prediction in zip(ok.index, expected):
        row = ok.loc[path]
        for name, head in prediction.heads.items():
            # an unknown answer (`fashionnet.open_set`) is a null label; pandas reads NaN
            assert (row[name] if isinstance(row[name], str) else None) == head.label
            assert row[f"{name}_probability"] == pytest.approx(head.probability, abs=1e-5)
            for cls, p in head.probabilities.items():
                assert row[f"{name}_prob_{cls}"] == pytest.approx(p, abs=1e-5)


def test_ray_labelling_cli_manifest_uris_and_refusals(ray_local, photos, tmp_path, capsys):
    from fashionnet.cli import main

    files = sorted(photos.rglob("*.jpg"))[:3]
    listing = tmp_path / "uris.txt"  # file:// URIs take the object-storage path (Arrow's fs)
    listing.write_text("\n".join(f.resolve().as_uri() for f in files) + "\n")
    out = tmp_path / "out"
    assert main(["classify", "--engine", "ray", str(listing), "--output", str(out)]) == 0
    assert "labelled 3 image(s)" in capsys.readouterr().err
    assert json.loads((out / "_summary.json").read_text())["labelled"] == 3
    # An existing output is kept unless --overwrite; wrong combinations are one line each.
    assert main(["classify", "--engine", "ray", str(listing), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["classify", "--engine", "ray", str(listing), "--output", str(out),
                 "--annotate", str(tmp_path / "a")]) == 2
    assert "--annotate: not available with --engine ray" in capsys.readouterr().err
    assert main(["classify", str(files[0]), "--workers", "2"]) == 2
    assert "go with --engine ray" in capsys.readouterr().err
    # --workers 0 is refused, not quietly replaced by the default.
    assert main(["classify", "--engine", "ray", str(listing), "--output", str(tmp_path / "o0"),
                 "--workers", "0"]) == 2
    assert "--workers and --batch-size must be at least 1" in capsys.readouterr().err
    assert main(["train", "--dataset", str(photos), "--output", str(tmp_path / "t0"),
                 "--workers", "0"]) == 2
    assert "--workers must be at least 1, not 0" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_two_workers_writes_a_bundle_that_classifies(ray_local, tiny_dataset, tmp_path,
                                                              capsys):
    from fashionnet import TrainConfig, load
    from fashionnet.cli import main
    from fashionnet.training import load_dataset, split_dataset

    out = tmp_path / "run"
    argv = ["train", "--dataset", str(tiny_dataset), "--epochs", "2", "--input-size", "32",
            "--batch-size", "16", "--workers", "2", "--output", str(out), "--backbone", "scratch"]
    assert main(argv) == 0
    assert "trained on 2 Ray worker(s)" in capsys.readouterr().out
    cluster = json.loads((out / "cluster.json").read_text())
    assert cluster["workers"] == 2 and cluster["resumed_from_epoch"] is None
    assert not (tmp_path / ".run.ray").exists()  # checkpoints removed after success
    assert not list(tmp_path.glob(".run.tmp-*"))  # the chief's atomic write left nothing
    # The same split as a one-process run of the same config.
    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         backbone="scratch")
    data = load_dataset(config, progress=False)
    split = split_dataset(data, config)
    saved = json.loads((out / "split.json").read_text())
    assert len(saved["test"]) == len(split.test) and len(saved["train"]) == len(split.train)
    predictor = load(out)
    results = predictor.predict_files(sorted(tiny_dataset.rglob("*.jpg"))[:4])
    assert all(r.error is None and set(r.heads) == {"color", "category"} for r in results)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["test"]["exact_match"] <= 1.0


def _kill_second_worker_once(marker: str):
    """An epoch hook: worker 1 kills its own process (SIGKILL) after epoch 2, the first time."""

    def hook(epoch: int, rank: int) -> None:
        if rank == 1 and epoch == 1 and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_local, tiny_dataset, tmp_path,
                                                          monkeypatch):
    from fashionnet import TrainConfig
    from fashionnet.cluster import train_on_ray

    marker = tmp_path / "killed"
    config = TrainConfig(dataset=str(tiny_dataset), epochs=3, input_size=32, batch_size=16,
                         backbone="scratch")
    # A user's own --storage folder, given relative: used as it is, and only this run's
    # sub-folder removed after success (it used to be deleted whole, the user's files too).
    shared = tmp_path / "shared-mount"
    shared.mkdir()
    (shared / "notes.txt").write_text("the user's own file")
    monkeypatch.chdir(tmp_path)
    result = train_on_ray(config, tmp_path / "run", workers=2, max_failures=2, verbose=False,
                          storage="shared-mount",
                          epoch_hook=_kill_second_worker_once(str(marker)))
    assert (shared / "notes.txt").read_text() == "the user's own file"
    assert not (shared / "fashionnet-run").exists()
    assert marker.is_file()  # the worker did die
    resumed = result.cluster["resumed_from_epoch"]
    assert resumed in (1, 2)  # from a checkpoint, not from scratch
    assert result.metrics["epochs_run"] == 3  # the history of the epochs before the kill is kept
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    assert np.isfinite(result.metrics["test"]["exact_match"])


def test_ray_workers_start_with_the_noisy_loggers_silenced(monkeypatch):
    """The Ray training path printed 216 stderr lines for 3 useful ones: 124 of them Ray
    Train's placement-group cleaner saying, every few seconds, that the state API (which
    needs the dashboard we do not start) is unavailable; and colour escapes in a log file."""
    ray = pytest.importorskip("ray")
    from fashionnet import cluster

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    cluster.connect(num_cpus=1)
    hook = seen["runtime_env"]["worker_process_setup_hook"]
    assert hook == "fashionnet.cluster.quiet_worker_logs"
    assert os.environ.get("RAY_COLOR_PREFIX") == "0"  # pytest's stderr is not a terminal
    cluster.quiet_worker_logs()
    for name in cluster.NOISY_RAY_LOGGERS:
        assert logging.getLogger(name).getEffectiveLevel() >= logging.ERROR
