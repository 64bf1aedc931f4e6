"""Tracking (issue 37): TensorBoard event files for every run, MLflow when asked."""

from __future__ import annotations

import pytest

from fashionnet import TrainConfig, train
from fashionnet.tracking import flat_params, image_tags, read_scalars


@pytest.fixture(scope="module")
def tracked_run(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         cache=False, backbone="scratch")
    return train(config, out, verbose=0)


def test_every_run_writes_event_files_tensorboard_parses(tracked_run):
    board = tracked_run.bundle.path / "tensorboard"
    scalars = read_scalars(board)
    assert [step for step, _ in scalars["train/epoch_loss"]] == [0, 1]
    for head in ("color", "category"):
        assert len(scalars[f"validation/epoch_{head}_output_accuracy"]) == 2
    assert len(scalars["validation/epoch_exact_match"]) == 2  # our own val exact match
    assert any(tag.endswith("learning_rate") for tag in scalars)
    assert {"confusion/color", "confusion/category"} <= set(image_tags(board))


def test_the_work_folder_is_gone_and_the_logs_are_in_the_bundle(tracked_run):
    run = tracked_run.bundle.path
    assert not (run.parent / f".{run.name}.run").exists()
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_flat_params_name_nested_settings():
    params = flat_params({"epochs": 3, "heads": [{"name": "color", "classes": ["a"]}],
                          "x": {"y": 1}})
    assert params == {"epochs": "3", "heads.0.name": "color", "heads.0.classes": "['a']",
                      "x.y": "1"}


def test_mlflow_run_has_params_metrics_and_the_bundle(tiny_dataset, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         cache=False, backbone="scratch")
    train(config, tmp_path / "run", verbose=0, track="mlflow", tracking_uri=uri)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fashionnet")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    assert "test_exact_match" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert "bundle/labels.json" in artifacts and "bundle/model.keras" in artifacts
