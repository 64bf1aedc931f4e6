"""Hostile inputs, round two (issue 38): never delete what the user did not ask to delete.

Each test failed before its fix: outputs that are (or hold) the inputs, ``--overwrite`` on a
folder of the user's, annotated copies written over the originals, symlinked folders and
manifest rows that lead elsewhere, bundle side files that are FIFOs or ``/dev/zero``, NaN
settings, Ray addresses where nothing listens, uploads that trickle, timed-out work that kept
its slot, and the tracebacks of the last round.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionnet.bundle import load_bundle
from fashionnet.config import TrainConfig
from fashionnet.errors import FashionNetError
from fashionnet.outputs import OUTPUT_MARKER, check_destination, check_output
from tests.conftest import solid
from tests.test_hostile import one_line_error, run_cli

fifos = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def finishes(fn, seconds: float = 10.0):
    """Run ``fn`` in a thread; (finished in time, its result or exception)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box["value"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("value")


@pytest.fixture
def photos(tmp_path) -> Path:
    """A user's folder dataset with a file that is not an image beside it."""
    root = tmp_path / "d" / "photos"
    for combo, color in (("red_dress", (220, 20, 20)), ("blue_shirt", (20, 20, 220))):
        for i in range(3):
            solid(root / combo / f"{i}.jpg", color)
    (tmp_path / "d" / "notes.txt").write_text("keep me")
    return root


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- 2. the output is, holds or lies inside an input --------------------------------------


@pytest.mark.parametrize("spelling", ["same", "parent", "dotdot", "symlink", "inside"])
def test_train_refuses_an_output_that_is_holds_or_lies_in_the_dataset(photos, tmp_path, capsys,
                                                                      spelling):
    before = _tree(tmp_path / "d")
    link = tmp_path / "link"
    link.symlink_to(photos)
    output = {"same": photos, "parent": photos.parent, "dotdot": photos / "red_dress" / "..",
              "symlink": link, "inside": photos / "runs" / "model"}[spelling]
    code, _, err = run_cli(capsys, "train", "--dataset", photos, "--output", output,
                           "--overwrite", "--epochs", "1", "--input-size", "32")
    assert code == 2 and one_line_error(err), err
    assert "dataset" in err and "nothing was written" in err
    assert _tree(tmp_path / "d") == before
    assert (tmp_path / "d" / "notes.txt").read_text() == "keep me"


def test_overwrite_never_deletes_a_folder_fashionnet_did_not_write(photos, tmp_path, capsys):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "train", "--dataset", photos, "--output", mine,
                           "--overwrite", "--epochs", "1", "--input-size", "32")
    assert code == 2 and one_line_error(err) and OUTPUT_MARKER in err, err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_what_fashionnet_wrote(tiny_dataset, tmp_path):
    from fashionnet import train

    config = TrainConfig(dataset=str(tiny_dataset), epochs=1, input_size=32, batch_size=16,
                         cache=False, backbone="scratch")
    out = tmp_path / "run"
    train(config, out, verbose=0)
    assert (out / OUTPUT_MARKER).is_file()
    first = (out / "labels.json").stat().st_mtime_ns
    time.sleep(0.01)
    train(config, out, overwrite=True, verbose=0)
    assert (out / "labels.json").stat().st_mtime_ns != first


def test_doctor_refuses_the_dataset_or_its_parent_as_output(photos, tmp_path, capsys):
    pytest.importorskip("cleanlab")
    before = _tree(tmp_path / "d")
    for output in (photos, photos.parent):
        code, _, err = run_cli(capsys, "doctor", "--dataset", photos, "--output", output,
                               "--overwrite", "--quiet")
        assert code == 2 and one_line_error(err), err
    assert _tree(tmp_path / "d") == before


def test_doctor_output_under_a_file_is_one_line(photos, tmp_path, capsys):
    pytest.importorskip("cleanlab")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "doctor", "--dataset", photos, "--output", blocker / "report",
                           "--quiet")
    assert code == 2 and one_line_error(err) and "not a folder" in err, err


def test_ray_labelling_refuses_its_input_as_output_before_starting(photos, tmp_path, capsys):
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    from fashionnet.default_model import default_model_path

    before = _tree(photos)
    code, _, err = run_cli(capsys, "classify", "--engine", "ray", photos, "--output", photos,
                           "--overwrite", "--model", default_model_path())
    assert code == 2 and one_line_error(err) and "is the input" in err, err
    assert _tree(photos) == before


def test_a_manifests_images_count_as_inputs(tmp_path):
    images = tmp_path / "m" / "images"
    solid(images / "a.jpg", (1, 2, 3))
    manifest = tmp_path / "m" / "labels.csv"
    manifest.write_text("path,color\nimages/a.jpg,red\n")
    from fashionnet.outputs import dataset_inputs

    with pytest.raises(FashionNetError, match="contains the image"):
        check_destination(images, dataset_inputs(manifest), overwrite=True)
    check_destination(tmp_path / "m" / "runs", dataset_inputs(manifest))  # beside it: fine


def test_evaluation_may_live_inside_the_model_but_not_replace_it(tmp_path):
    model = tmp_path / "run"
    model.mkdir()
    check_output(model / "evaluation", [("model", model)])
    with pytest.raises(FashionNetError, match="is the model"):
        check_output(model, [("model", model)])


# --- 3. annotated copies over the originals ----------------------------------------------


def test_annotate_into_the_photos_folder_keeps_the_original(tiny_bundle, tmp_path, capsys):
    folder = tmp_path / "pics"
    photo = solid(folder / "photo.png", (200, 10, 10), size=(64, 64))
    before = photo.read_bytes()
    code, _, err = run_cli(capsys, "classify", "--model", tiny_bundle.bundle.path,
                           "--annotate", folder, photo)
    assert code == 2 and one_line_error(err) and "--annotate" in err, err
    assert photo.read_bytes() == before


def test_annotate_writes_into_a_new_folder_and_again_into_its_own(tiny_bundle, tmp_path, capsys):
    photo = solid(tmp_path / "pics" / "photo.jpg", (200, 10, 10), size=(64, 64))
    out = tmp_path / "annotated"
    for _ in range(2):
        code, _, err = run_cli(capsys, "classify", "--model", tiny_bundle.bundle.path,
                               "--annotate", out, photo)
        assert code == 0, err
    assert (out / "photo.png").is_file() and (out / OUTPUT_MARKER).is_file()


# --- 4. symlinked folders in a folder dataset --------------------------------------------


def test_a_link_to_the_parent_does_not_relabel_the_other_classes(photos):
    from fashionnet.data.sources import read_folders

    (photos / "blue_shirt" / "parent").symlink_to("..")
    records = read_folders(photos, ["color", "category"])
    assert len(records) == 6
    assert sum(r.labels["color"] == "blue" for r in records) == 3


def test_links_to_the_folder_itself_do_not_make_the_walk_explode(photos):
    from fashionnet.data.sources import read_folders

    for name in ("a", "b"):
        (photos / "red_dress" / name).symlink_to(".")
    done, value = finishes(lambda: read_folders(photos, ["color", "category"]), 20)
    assert done and not isinstance(value, BaseException), value
    assert len(value) == 6


def test_a_combination_folder_linked_to_the_dataset_is_refused(photos):
    from fashionnet.data.sources import read_folders

    (photos / "black_shoes").symlink_to(photos)
    with pytest.raises(FashionNetError, match="symbolic link"):
        read_folders(photos, ["color", "category"])


# --- 5. a manifest row through a symlink ---------------------------------------------------


def test_a_manifest_row_through_a_symlink_cannot_leave_the_folder(tmp_path):
    from fashionnet.data.sources import read_manifest

    outside = tmp_path / "secret"
    solid(outside / "passwd.jpg", (1, 1, 1))
    root = tmp_path / "m"
    (root / "images").mkdir(parents=True)
    (root / "images" / "etc_link").symlink_to(outside)
    manifest = root / "labels.csv"
    manifest.write_text("path,color\nimages/etc_link/passwd.jpg,red\n")
    with pytest.raises(FashionNetError, match="line 2.*symbolic link"):
        read_manifest(manifest)
    records, _ = read_manifest(manifest, allow_outside=True)  # asked for: allowed
    assert len(records) == 1


# --- 6. bundle side files -------------------------------------------------------------------


@pytest.fixture
def bundle_dir(tiny_bundle, tmp_path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.bundle.path, target)
    return target


@fifos
@pytest.mark.parametrize("name", ["metrics.json", "labels.json"])
def test_a_fifo_side_file_is_refused_not_waited_on(bundle_dir, name):
    (bundle_dir / name).unlink()
    os.mkfifo(bundle_dir / name)
    done, value = finishes(lambda: load_bundle(bundle_dir), 10)
    assert done, "load_bundle hung on a FIFO"
    assert isinstance(value, FashionNetError) and "not a regular file" in str(value), value


@pytest.mark.parametrize("name", ["metrics.json", "labels.json"])
def test_a_link_to_dev_zero_is_refused_not_read_for_ever(bundle_dir, name):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    (bundle_dir / name).unlink()
    (bundle_dir / name).symlink_to("/dev/zero")
    done, value = finishes(lambda: load_bundle(bundle_dir), 10)
    assert done and isinstance(value, FashionNetError), value
    assert "not a regular file" in str(value)


def test_a_deeply_nested_labels_json_is_one_line(bundle_dir, tmp_path, capsys):
    (bundle_dir / "labels.json").write_text("[" * 200_000 + "]" * 200_000)
    photo = solid(tmp_path / "photo.jpg", (1, 2, 3))
    code, _, err = run_cli(capsys, "classify", "--model", bundle_dir, photo)
    assert code == 2 and one_line_error(err) and "labels" in err, err


@fifos
def test_a_fifo_model_onnx_is_named_for_what_it_is(bundle_dir):
    pytest.importorskip("onnxruntime")
    from fashionnet import load

    os.mkfifo(bundle_dir / "model.onnx")
    done, value = finishes(lambda: load(bundle_dir, backend="onnx"), 10)
    assert done and isinstance(value, FashionNetError), value
    assert "not a regular file" in str(value) and "missing" not in str(value)


def test_a_head_switched_to_multi_label_is_refused(bundle_dir):
    from fashionnet import load

    doc = json.loads((bundle_dir / "labels.json").read_text())
    doc["heads"][0]["kind"] = "multi"
    (bundle_dir / "labels.json").write_text(json.dumps(doc))
    with pytest.raises(FashionNetError, match="softmax"):
        load(bundle_dir, backend="keras")


# --- 7. NaN and infinity ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["learning_rate", "recolor", "val_fraction", "cutout"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_settings_are_refused(name, value):
    with pytest.raises(FashionNetError, match=name):
        TrainConfig(**{name: value})


def test_nan_in_a_toml_config_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("learning_rate = nan\n")
    with pytest.raises(FashionNetError, match="finite"):
        TrainConfig.from_toml(path)
    path.write_text('[[heads]]\nname = "color"\nloss_weight = nan\n')
    with pytest.raises(FashionNetError, match="loss_weight"):
        TrainConfig.from_toml(path)


def test_nan_on_the_command_line_is_one_line(photos, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", photos, "--output", tmp_path / "r",
                           "--learning-rate", "nan")
    assert code == 2 and one_line_error(err) and "finite" in err, err
    code, _, err = run_cli(capsys, "train", "--dataset", photos, "--output", tmp_path / "r",
                           "--loss-weight", "color=nan")
    assert code == 2 and one_line_error(err), err


@pytest.mark.parametrize("flag,value", [("--request-timeout", "nan"), ("--read-timeout", "inf"),
                                        ("--upload-timeout", "nan"), ("--workers", "-1"),
                                        ("--queue", "-3"), ("--port", "70000"),
                                        ("--model-workers", "-2"), ("--lone-threads", "-1")])
def test_serve_refuses_bad_numbers_in_one_line(capsys, flag, value):
    pytest.importorskip("fastapi")
    code, _, err = run_cli(capsys, "serve", flag, value)
    assert code == 2 and one_line_error(err), err


# --- 8. Ray addresses and outputs --------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_ray_address_where_nothing_listens_fails_fast():
    from fashionnet.cluster import check_address

    started = time.perf_counter()
    with pytest.raises(FashionNetError, match="no Ray cluster answers"):
        check_address(f"127.0.0.1:{_closed_port()}", timeout=5)
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:port", "http://x:1", ":6379",
                                     "127.0.0.1:0", "127.0.0.1:99999", "://x"])
def test_a_malformed_ray_address_is_one_line(address):
    from fashionnet.cluster import check_address

    with pytest.raises(FashionNetError, match="--address"):
        check_address(address)


def test_a_storage_uri_output_keeps_its_double_slash():
    from fashionnet.cli import build_parser

    args = build_parser().parse_args(["classify", "x", "--engine", "ray", "--output",
                                      "file:///tmp/out"])
    assert args.output == "file:///tmp/out"


def test_ray_outputs_are_checked_before_the_job(photos, tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    from fashionnet.cluster.labelling import label
    from fashionnet.default_model import default_model_path

    with pytest.raises(FashionNetError, match="--output"):
        label(default_model_path(), photos, "nosuchscheme://bucket/x")
    with pytest.raises(FashionNetError, match="is the input"):
        label(default_model_path(), photos, f"file://{photos}", overwrite=True)


# --- 9. the server: trickled uploads, timed-out work -------------------------------------------


def test_an_upload_that_trickles_in_is_cut_off_at_the_total_deadline(tiny_bundle):
    pytest.importorskip("fastapi")
    import asyncio

    from fashionnet import load
    from fashionnet.server.app import create_app

    app = create_app(load(tiny_bundle.bundle.path, backend="keras"), read_timeout=5,
                     upload_timeout=0.6)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/predict",
             "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"image/jpeg")]}
    sent: list = []

    async def receive():  # one byte every 0.2 s: never silent for read_timeout
        await asyncio.sleep(0.2)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message):
        sent.append(message)

    async def scenario():
        await asyncio.wait_for(app(scope, receive, send), 10)

    started = time.perf_counter()
    asyncio.run(scenario())
    status = next(m for m in sent if m["type"] == "http.response.start")["status"]
    assert status == 408 and time.perf_counter() - started < 3


def test_a_timed_out_batch_gives_its_slot_back_at_the_next_image(tiny_bundle, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fashionnet import load
    from fashionnet.server.app import create_app
    from tests.test_hostile import _slow_decode, jpeg_bytes

    predictor = load(tiny_bundle.bundle.path, backend="keras")
    app = create_app(predictor, request_timeout=0.3, workers=1, queue=1, max_batch=8)
    client = TestClient(app, raise_server_exceptions=False)
    _slow_decode(predictor, monkeypatch, 0.4)
    files = [("files", (f"{i}.jpg", jpeg_bytes(), "image/jpeg")) for i in range(8)]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 503
    time.sleep(0.8)  # the image being decoded finishes; the other six are never started
    assert app.state.pool.pending == 0


# --- 10. configs and the doctor's pixel cap --------------------------------------------------


@pytest.mark.parametrize("content", [
    "dataset = 'caf\xe9'\n".encode("latin-1"),
    b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
    b'separator = ""\n',
    b'multi_separator = ""\n',
])
def test_hostile_toml_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "train", "--config", path, "--output", tmp_path / "r")
    assert code == 2 and one_line_error(err), err


@fifos
def test_a_fifo_config_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "c.toml")
    done, value = finishes(lambda: TrainConfig.from_toml(tmp_path / "c.toml"), 10)
    assert done and isinstance(value, FashionNetError), value


def test_the_doctor_decodes_under_the_servers_pixel_cap(tmp_path):
    pytest.importorskip("cleanlab")
    from fashionnet.doctor.images import decode_files

    big = tmp_path / "big.png"
    Image.new("L", (5000, 4000), 255).save(big, optimize=True)  # 20 M pixels, a few KB
    assert big.stat().st_size < 200_000
    small = solid(tmp_path / "small.png", (1, 2, 3))
    decoded = decode_files([big, small], 32, progress=False, cache=False)
    assert decoded.kept.tolist() == [1]
    assert "over the limit" in decoded.errors[0]



# --- a round of our own on what this round added (checkpoints, runs, the model card) -------


def _checkpointed_run(tiny_dataset, tmp_path, monkeypatch):
    from fashionnet.training import _SaveEachEpoch, checkpoint_folder

    class Killed(BaseException):
        pass

    real = _SaveEachEpoch.on_epoch_end

    def once(self, epoch, logs=None):
        real(self, epoch, logs)
        raise Killed

    monkeypatch.setattr(_SaveEachEpoch, "on_epoch_end", once)
    config = TrainConfig(dataset=str(tiny_dataset), epochs=2, input_size=32, batch_size=16,
                         cache=False, backbone="scratch")
    with pytest.raises(Killed):
        from fashionnet import train

        train(config, tmp_path / "run", verbose=0)
    monkeypatch.undo()
    return config, checkpoint_folder(tmp_path / "run")


def test_a_checkpoint_holding_a_pickle_is_refused_not_run(tiny_dataset, tmp_path, monkeypatch):
    from fashionnet import train

    config, folder = _checkpointed_run(tiny_dataset, tmp_path, monkeypatch)
    marker = tmp_path / "pwned"
    np.savez(folder / "weights.npz", np.array([_Pwn(str(marker))], dtype=object))
    with pytest.raises(FashionNetError, match="weights.npz"):
        train(config, tmp_path / "run", verbose=0, resume=True)
    assert not marker.exists()


class _Pwn:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@fifos
def test_a_fifo_checkpoint_state_is_refused_not_waited_on(tiny_dataset, tmp_path, monkeypatch):
    from fashionnet import train

    config, folder = _checkpointed_run(tiny_dataset, tmp_path, monkeypatch)
    (folder / "state.json").unlink()
    os.mkfifo(folder / "state.json")
    done, value = finishes(lambda: train(config, tmp_path / "run", verbose=0, resume=True), 60)
    assert done and isinstance(value, FashionNetError), value


def test_runs_survives_link_loops_and_broken_bundles(tiny_bundle, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(tiny_bundle.bundle.path, root / "good")
    (root / "loop").mkdir()
    (root / "loop" / "again").symlink_to(root)
    (root / "broken").mkdir()
    (root / "broken" / "labels.json").write_text("[" * 100_000)
    done, value = finishes(lambda: run_cli(capsys, "runs", root), 30)
    assert done and value[0] == 0, value
    assert "good" in value[1] and "skipped" in value[2] and "broken" in value[2]


def test_the_card_of_a_hostile_bundle_is_text_not_markup(tiny_bundle, tmp_path):
    from fashionnet.model_card import render_model_card

    path = tmp_path / "run"
    shutil.copytree(tiny_bundle.bundle.path, path)
    doc = json.loads((path / "labels.json").read_text())
    doc["heads"][0]["classes"][0] = "<script>alert(1)</script>"
    (path / "labels.json").write_text(json.dumps(doc))
    card = render_model_card(path)
    assert "<script>alert(1)</script>" in card  # as text: served as text/markdown, not HTML


def test_dotdot_after_a_link_is_resolved_where_the_link_leads(tmp_path):
    """``link/..`` is the parent of the link's target, not the link's own folder."""
    data = tmp_path / "store" / "photos"
    data.mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to(data)
    with pytest.raises(FashionNetError, match="contains the dataset"):
        check_output(tmp_path / "work" / "link" / "..", [("dataset", data)])
