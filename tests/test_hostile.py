"""Hostile and broken inputs (issue 11): every input path, attacked.

Each test here failed before its fix. The classes: decoders that raise what nobody expects,
formats that should never be opened, FIFOs, damaged caches, tampered bundles, crashes between
renames, manifests that lie about their lines, and the HTTP server under abuse. Grow this file
with every new input path.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionnet.bundle import atomic_directory, load_bundle, recover, update_bundle_file
from fashionnet.cli import main
from fashionnet.data import images as images_module
from fashionnet.data.images import ImageDecodeError, decode_image, decode_many
from fashionnet.errors import FashionNetError
from fashionnet.outputs import OUTPUT_MARKER, claim_output
from tests.conftest import solid

RED = (220, 20, 20)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def corrupt_avif_raising_runtime_error() -> bytes | None:
    """A damaged AVIF on which Pillow's AVIF plugin raises RuntimeError (None if none found)."""
    if "AVIF" not in Image.registered_extensions().values():
        return None
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(buf, "AVIF")
    data = buf.getvalue()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        mutated = bytearray(data)
        for _ in range(3):
            mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
        try:
            with Image.open(io.BytesIO(bytes(mutated)), formats=["AVIF"]) as im:
                im.load()
        except RuntimeError:
            return bytes(mutated)
        except Exception:
            continue
    return None


# --- 8. every decoder failure is the file's failure -------------------------------------


def test_a_corrupt_avif_raising_runtime_error_is_one_skipped_file(tmp_path):
    data = corrupt_avif_raising_runtime_error()
    if data is None:
        pytest.skip("this Pillow has no AVIF decoder that raises RuntimeError")
    (tmp_path / "bad.avif").write_bytes(data)
    with pytest.raises(ImageDecodeError, match="bad.avif"):
        decode_image(tmp_path / "bad.avif")
    good = solid(tmp_path / "good.jpg", RED)
    out = decode_many([good, tmp_path / "bad.avif", good], 16, progress=False, cache=False)
    assert out.kept.tolist() == [0, 2] and len(out.failures) == 1


@pytest.mark.parametrize("error", [RuntimeError("Failed to decode image"), KeyError("tile"),
                                   IndexError("list index out of range"),
                                   __import__("struct").error("unpack requires a buffer"),
                                   ZeroDivisionError("division by zero")])
def test_any_exception_from_a_decoder_plugin_fails_only_that_file(tmp_path, monkeypatch, error):
    good = solid(tmp_path / "good.png", RED)
    bad = solid(tmp_path / "bad.png", RED, size=(41, 41))
    real = images_module._to_rgb

    def to_rgb(im, background):
        if im.size == (41, 41):
            raise error
        return real(im, background)

    monkeypatch.setattr(images_module, "_to_rgb", to_rgb)
    with pytest.raises(ImageDecodeError, match=r"bad\.png: "):
        decode_image(bad, 16)
    out = decode_many([good, bad, good], 16, progress=False, cache=False)
    assert out.kept.tolist() == [0, 2] and "bad.png" in out.failures[0]
    assert "\n" not in out.failures[0]


def test_classify_keeps_the_good_images_of_a_batch_with_a_crashing_decoder(
        tiny_bundle, tmp_path, monkeypatch, capsys):
    good = solid(tmp_path / "good.png", RED)
    bad = solid(tmp_path / "bad.png", RED, size=(41, 41))
    real = images_module._to_rgb

    def to_rgb(im, background):
        if im.size == (41, 41):
            raise RuntimeError("decoder exploded")
        return real(im, background)

    monkeypatch.setattr(images_module, "_to_rgb", to_rgb)
    code, out, err = run_cli(capsys, "classify", "--model", tiny_bundle.bundle.path, good, bad,
                             "--json", "--backend", "keras")
    results = json.loads(out)
    assert code == 0 and "heads" in results[0] and "decoder exploded" in results[1]["error"]
    assert "Traceback" not in err


# --- 3. only the documented formats are opened -------------------------------------------


@pytest.mark.parametrize("fmt,suffix", [("ICO", "ico"), ("PPM", "ppm"), ("TGA", "tga"),
                                        ("PCX", "pcx"), ("SGI", "sgi"), ("DDS", "dds")])
def test_undocumented_formats_are_refused_unread(tmp_path, fmt, suffix):
    path = tmp_path / f"x.{suffix}"
    Image.new("RGB", (32, 32), RED).save(path, fmt)
    with Image.open(path) as im:  # Pillow itself would open it
        assert im.format == fmt
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(path, 16)


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript",
                        lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100000 100000\n"
           b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
    (tmp_path / "evil.jpg").write_bytes(eps)  # an extension that lies, too
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(tmp_path / "evil.jpg", 16)
    assert calls == []


def test_documented_formats_still_open(tmp_path):
    for fmt, suffix in (("TIFF", "tif"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp")):
        path = solid(tmp_path / f"a.{suffix}", RED, fmt=fmt)
        assert decode_image(path, 8)[..., 0].mean() > 180


def test_sixteen_bit_png_decodes_without_a_float64_copy(tmp_path):
    import tracemalloc

    values = np.full((1000, 2000), 40000, np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    tracemalloc.start()
    try:
        out = decode_image(tmp_path / "d.png", 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert int(out[4, 4, 0]) == 40000 // 257
    # 2 M pixels: a float64 copy alone is 16 MB (the 140 KB PNG that took 1.8 GB); now
    # NumPy holds at most about 4 bytes a pixel (the 16-bit copy and its 8-bit result).
    assert peak < 4.5 * values.size, f"{peak / 1e6:.1f} MB of NumPy arrays for 2 M pixels"


# --- 10. regular files only; manifests stay in their folder ----------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    import threading

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    result = {}

    def attempt():
        try:
            decode_image(fifo, 16)
        except ImageDecodeError as exc:
            result["error"] = str(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock the hung open so the test process can exit
        with open(fifo, "wb"):
            pass
        pytest.fail("decoding a FIFO blocked")
    assert "not a regular file" in result["error"]
    good = solid(tmp_path / "good.jpg", RED)
    out = decode_many([good, fifo], 16, progress=False, cache=False)
    assert out.kept.tolist() == [0] and "pipe.jpg" in out.failures[0]


def test_a_folder_named_like_an_image_is_one_failure(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(ImageDecodeError, match="folder.jpg"):
        decode_image(tmp_path / "folder.jpg", 16)


# --- 11. the decoded-image cache repairs itself -----------------------------------------


def _cache_entry(tmp_path) -> tuple[list[Path], Path]:
    paths = [solid(tmp_path / f"{i}.png", (40 * i, 10, 10)) for i in range(3)]
    decode_many(paths, 16, progress=False)
    entries = [p for p in images_module.cache_dir().iterdir() if not p.name.startswith(".")]
    key = images_module._cache_key(paths, 16, images_module.DEFAULT_MAX_PIXELS)
    entry = images_module.cache_dir() / key
    assert entry in entries
    return paths, entry


@pytest.mark.parametrize("damage", [
    lambda e: (e / "images.npy").write_bytes(b""),
    lambda e: (e / "meta.json").write_text("{not json"),
    lambda e: (e / "meta.json").write_text("[]"),
    lambda e: (e / "meta.json").write_text('{"failures": 3}'),
    lambda e: np.save(e / "images.npy", np.zeros((3, 8, 8, 3), np.uint8)),
    lambda e: np.save(e / "images.npy", np.zeros((2, 16, 16, 3), np.uint8)),
    lambda e: np.save(e / "images.npy", np.zeros((3, 16, 16, 3), np.float32)),
    lambda e: np.save(e / "kept.npy", np.array([0, 1, 7])),
    lambda e: np.save(e / "images.npy", np.full((3, 16, 16, 3), 7, np.uint8)),  # bit rot
    lambda e: (e / "kept.npy").unlink(),
])
def test_a_damaged_cache_entry_is_rebuilt_with_one_warning(tmp_path, caplog, damage):
    paths, entry = _cache_entry(tmp_path)
    truth = decode_many(paths, 16, progress=False, cache=False)
    damage(entry)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fashionnet"):
        again = decode_many(paths, 16, progress=False)
    assert again.images.tobytes() == truth.images.tobytes()
    assert again.kept.tolist() == [0, 1, 2]
    warnings = [r for r in caplog.records if "cache" in r.getMessage()]
    assert len(warnings) == 1 and "rebuilding" in warnings[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fashionnet"):
        third = decode_many(paths, 16, progress=False)  # the rebuilt entry is good again
    assert third.images.tobytes() == truth.images.tobytes() and not caplog.records


def test_cache_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    solid(tmp_path / "a.png", RED)
    decode_many([tmp_path / "a.png"], 16, progress=False)
    assert len(synced) >= 4  # three files and their folder


@pytest.mark.parametrize("damage", ["float32", "shape", "truncated", "nan", "pickle"])
def test_a_feature_map_cache_entry_of_the_wrong_kind_is_recomputed(tmp_path, damage):
    """Feature maps (`category_attention`) are kept as float16 arrays of one shape: a stored
    file of another dtype, shape, a cut file, non-finite values or a pickled object is not
    read (never unpickled) but computed again."""
    import pickle

    from fashionnet.model.feature_cache import Backbone, extract_features

    def model(x: np.ndarray) -> np.ndarray:  # a (n, 2, 2, 3) "feature map"
        return x[:, ::8, ::8, :].astype(np.float32)

    backbone = Backbone("toy-map", "cd" * 32, 16, 12, model, dtype="float16")
    from PIL import Image

    paths = []
    for i, colour in enumerate([(200, 30, 10), (10, 30, 200), (90, 90, 90)]):
        paths.append(tmp_path / "img" / f"p{i}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), colour).save(paths[-1])
    root = tmp_path / "features"
    first = extract_features(paths, backbone, root=root, progress=False)
    assert first.views["plain"].dtype == np.float16 and first.views["plain"].shape == (3, 12)
    entries = sorted(root.rglob("*.npy"))
    assert len(entries) == 3
    for entry in entries:
        if damage == "float32":
            np.save(entry, np.ones(12, np.float32), allow_pickle=False)
        elif damage == "shape":
            np.save(entry, np.ones(13, np.float16), allow_pickle=False)
        elif damage == "truncated":
            entry.write_bytes(entry.read_bytes()[:-5])
        elif damage == "nan":
            np.save(entry, np.full(12, np.nan, np.float16), allow_pickle=False)
        else:
            entry.write_bytes(pickle.dumps(np.ones(12, np.float16)))
    again = extract_features(paths, backbone, root=root, progress=False)
    assert again.computed == 3
    np.testing.assert_array_equal(again.views["plain"], first.views["plain"])


# --- 5 & 6. bundles are checked against their model; bad ones fail in one line ------------


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    path = tmp_path / "run"
    shutil.copytree(tiny_bundle.bundle.path, path)
    (path / "model.onnx").unlink(missing_ok=True)
    return path


def edit_labels(path: Path, change) -> None:
    doc = json.loads((path / "labels.json").read_text())
    doc = change(doc)
    (path / "labels.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("change,field", [
    (lambda d: {**d, "temperatures": {"color": -1.0, "category": 1.0}}, "temperatures.color"),
    (lambda d: {**d, "temperatures": {"color": 0.0}}, "temperatures.color"),
    (lambda d: {**d, "temperatures": {"color": float("nan")}}, "temperatures.color"),
    (lambda d: {**d, "temperatures": {"color": float("inf")}}, "temperatures.color"),
    (lambda d: {**d, "temperatures": {"color": "hot"}}, "temperatures.color"),
    (lambda d: {**d, "temperatures": {"size": 1.0}}, "temperatures.size"),
    (lambda d: {**d, "temperatures": [1.0]}, "temperatures"),
    (lambda d: {**d, "heads": d["heads"] + [d["heads"][0]],
                "outputs": d["outputs"] + [d["outputs"][0]]}, "heads[2].name"),
    (lambda d: {**d, "heads": []}, "heads"),
    (lambda d: {**d, "heads": None}, "heads"),
    (lambda d: {**d, "heads": "color"}, "heads"),
    (lambda d: {**d, "heads": [3, 4]}, "heads[0]"),
    (lambda d: {**d, "heads": [{**d["heads"][0], "name": 7}, d["heads"][1]]}, "heads[0].name"),
    (lambda d: {**d, "heads": [{**d["heads"][0], "classes": "red"}, d["heads"][1]]},
     "heads[0].classes"),
    (lambda d: {**d, "heads": [{**d["heads"][0], "classes": []}, d["heads"][1]]},
     "heads[0].classes"),
    (lambda d: {**d, "heads": [{**d["heads"][0], "threshold": "high"}, d["heads"][1]]},
     "heads[0].threshold"),
    (lambda d: {**d, "heads": [{**d["heads"][0], "kind": "fuzzy"}, d["heads"][1]]}, "heads[0]"),
    (lambda d: {**d, "preprocessing": None}, "preprocessing"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "size": "big"}}, "preprocessing.size"),
    (lambda d: {**d, "preprocessing": {**d["preprocessing"], "scale": -1}}, "preprocessing.scale"),
    (lambda d: {**d, "format_version": "1"}, "format_version"),
    (lambda d: [], "must be a JSON object"),
    (lambda d: None, "must be a JSON object"),
    (lambda d: "labels", "must be a JSON object"),
])
def test_malformed_labels_json_is_one_line_naming_the_field(bundle_copy, capsys, change, field):
    edit_labels(bundle_copy, change)
    with pytest.raises(FashionNetError, match="labels.json") as info:
        load_bundle(bundle_copy)
    assert field in str(info.value) and "\n" not in str(info.value)
    solid(bundle_copy.parent / "a.jpg", RED)
    code, out, err = run_cli(capsys, "classify", "--model", bundle_copy, bundle_copy.parent / "a.jpg")
    assert code == 2 and one_line_error(err) and field in err and out == ""


def test_a_negative_temperature_would_invert_predictions_and_is_refused(bundle_copy, tiny_bundle):
    from fashionnet.metrics import apply_temperature

    probs = np.array([[0.7, 0.2, 0.05, 0.05]], np.float32)
    assert apply_temperature(probs, -1.0).argmax() != 0  # why it must never be loaded
    edit_labels(bundle_copy, lambda d: {**d, "temperatures": {"color": -1.0}})
    with pytest.raises(FashionNetError, match=r"'temperatures.color' must be a finite positive"):
        load_bundle(bundle_copy)


def test_a_class_count_that_differs_from_the_model_output_is_refused(bundle_copy):
    from fashionnet import load

    edit_labels(bundle_copy, lambda d: {**d, "heads": [
        {**d["heads"][0], "classes": d["heads"][0]["classes"] + ["purple"]}, d["heads"][1]]})
    with pytest.raises(FashionNetError, match=r"'heads\[0\]\.classes' lists 5 classes") as info:
        load(bundle_copy, backend="keras")
    assert "model.keras" in str(info.value) and "has 4 units" in str(info.value)


def test_an_input_size_that_differs_from_the_model_is_refused(bundle_copy):
    from fashionnet import load

    edit_labels(bundle_copy, lambda d: {**d, "input_size": 64,
                                        "preprocessing": {**d["preprocessing"], "size": 64}})
    with pytest.raises(FashionNetError, match=r"'preprocessing.size' says 64x64x3"):
        load(bundle_copy, backend="keras")


def test_an_onnx_model_is_checked_against_labels_too(bundle_copy):
    pytest.importorskip("tf2onnx")
    from fashionnet import load
    from fashionnet.runtime.export import export

    export(bundle_copy)
    edit_labels(bundle_copy, lambda d: {**d, "heads": [
        d["heads"][0], {**d["heads"][1], "classes": d["heads"][1]["classes"][:3]}]})
    with pytest.raises(FashionNetError, match=r"model.onnx: output 'category_output' has 4 units"):
        load(bundle_copy, backend="onnx")


def _rewrite_keras_config(path: Path, change) -> None:
    model = path / "model.keras"
    with zipfile.ZipFile(model) as z:
        members = {name: z.read(name) for name in z.namelist()}
    config = json.loads(members["config.json"])
    members["config.json"] = json.dumps(change(config)).encode()
    with zipfile.ZipFile(model, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_a_forbidden_object_in_model_keras_is_refused_in_one_line(bundle_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"

    def inject(config):
        layer = config["config"]["layers"][1]
        layer["module"], layer["class_name"] = "subprocess", "Popen"
        layer["registered_name"] = None
        layer["config"] = {"args": ["touch", str(marker)]}
        return config

    _rewrite_keras_config(bundle_copy, inject)
    solid(tmp_path / "a.jpg", RED)
    code, _, err = run_cli(capsys, "classify", "--model", bundle_copy, tmp_path / "a.jpg",
                           "--backend", "keras")
    assert code == 2 and one_line_error(err) and "model.keras" in err
    assert not marker.exists()


def test_a_lambda_layer_is_refused_by_safe_mode_in_one_line(bundle_copy, tmp_path, capsys):
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = [keras.layers.Dense(4, activation="softmax", name="color_output")(x),
               keras.layers.Dense(4, activation="softmax", name="category_output")(x)]
    keras.Model(inputs, outputs).save(bundle_copy / "model.keras")
    solid(tmp_path / "a.jpg", RED)
    code, _, err = run_cli(capsys, "classify", "--model", bundle_copy, tmp_path / "a.jpg",
                           "--backend", "keras")
    assert code == 2 and one_line_error(err) and "Lambda" in err and "model.keras" in err


@pytest.mark.parametrize("payload", [b"", b"not a zip", b"PK\x03\x04broken"])
def test_a_garbage_model_keras_is_one_line(bundle_copy, tmp_path, capsys, payload):
    (bundle_copy / "model.keras").write_bytes(payload)
    solid(tmp_path / "a.jpg", RED)
    code, _, err = run_cli(capsys, "classify", "--model", bundle_copy, tmp_path / "a.jpg",
                           "--backend", "keras")
    assert code == 2 and one_line_error(err) and "model.keras" in err


def test_a_model_answering_nan_gives_errors_not_numbers(bundle_copy, tmp_path, capsys, monkeypatch):
    from fashionnet.runtime import runners

    real_call = runners.KerasRunner.__call__
    monkeypatch.setattr(runners.KerasRunner, "__call__",
                        lambda self, batch: [np.full_like(o, np.nan) for o in real_call(self, batch)])
    solid(tmp_path / "a.jpg", RED)
    code, out, err = run_cli(capsys, "classify", "--model", bundle_copy, tmp_path / "a.jpg",
                             "--json", "--backend", "keras")
    def invalid(constant):
        raise AssertionError(f"--json printed {constant}, which is not JSON")

    results = json.loads(out, parse_constant=invalid)
    assert "error" in results[0] and "NaN" in results[0]["error"] and code == 1


# --- 12. overwrite keeps the old bundle until the new one is in place ---------------------


class Killed(BaseException):
    """Stands for SIGKILL: no except clause of ours catches it, no cleanup runs."""


def test_a_crash_between_the_renames_of_an_overwrite_loses_nothing(tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    (target / "labels.json").write_text("old")
    claim_output(target, "train")  # a bundle of an earlier run: ours to replace
    real_rename = Path.rename

    def rename(self, other):
        if ".tmp-" in self.name:  # the second rename: new bundle in
            raise Killed
        return real_rename(self, other)

    monkeypatch.setattr(Path, "rename", rename)
    # a hard kill runs no cleanup: replay one by refusing the roll-back too
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(Killed), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "labels.json").write_text("new")
    monkeypatch.undo()
    # What a SIGKILL at that instant leaves: old set aside, new not in. Fake a dead PID.
    aside = next(tmp_path.glob(".run.old-*"), None)
    if target.exists():  # our roll-back put it back already
        assert (target / "labels.json").read_text() == "old"
        return
    assert aside is not None
    dead = tmp_path / ".run.old-999999999"
    aside.rename(dead)
    recover(target)
    assert (target / "labels.json").read_text() == "old"
    assert not dead.exists()


def test_a_killed_overwrite_is_recovered_by_the_next_run_or_load(tmp_path, tiny_bundle):
    target = tmp_path / "run"
    # The state a SIGKILL between the two renames leaves behind (dead PIDs):
    shutil.copytree(tiny_bundle.bundle.path, tmp_path / ".run.old-999999998")
    (tmp_path / ".run.tmp-999999998").mkdir()
    (tmp_path / ".run.tmp-999999998" / "model.keras").write_bytes(b"x" * 1000)
    bundle = load_bundle(target)  # classify / serve / evaluate recover it
    assert bundle.path == target and (target / "labels.json").is_file()
    assert not (tmp_path / ".run.old-999999998").exists()
    assert not (tmp_path / ".run.tmp-999999998").exists()


def test_rollback_when_the_new_bundle_cannot_be_moved_in(tmp_path, monkeypatch):
    target = tmp_path / "run"
    target.mkdir()
    (target / "labels.json").write_text("old")
    claim_output(target, "train")  # a bundle of an earlier run: ours to replace
    real_rename = Path.rename

    def rename(self, other):
        if ".tmp-" in self.name:
            raise OSError("disk trouble")
        return real_rename(self, other)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "labels.json").write_text("new")
    monkeypatch.undo()
    assert (target / "labels.json").read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_temp_leftovers_of_dead_runs_are_cleaned(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "labels.json").write_text("{}")
    claim_output(target, "train")
    (target / ".model.onnx.tmp-999999997").write_bytes(b"x" * 100)
    (target / ".model.raw.tmp-999999997.onnx").write_bytes(b"x")
    (target / f".model.onnx.tmp-{os.getppid()}").write_bytes(b"alive")  # a live writer's
    (tmp_path / ".run.tmp-999999997").mkdir()
    (tmp_path / ".run.old-999999997").mkdir()
    update_bundle_file(target, "model.onnx", lambda p: p.write_bytes(b"onnx"))
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["labels.json", "model.onnx", f".model.onnx.tmp-{os.getppid()}", OUTPUT_MARKER])
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "labels.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# --- 7. a Keras without the known safe-mode bypasses ---------------------------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def test_the_keras_floor_excludes_the_known_safe_mode_bypasses():
    import re

    import keras
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    spec = next(d for d in project["project"]["optional-dependencies"]["train"]
                if d.startswith("keras"))
    floor = _version(re.search(r">=\s*([\d.]+)", spec).group(1))
    # CVE-2025-1550: fixed in 3.9.0; CVE-2025-8747 and CVE-2025-9906: 3.11.0;
    # CVE-2025-49655 (TorchModuleWrapper): 3.11.3.
    assert floor >= (3, 11, 3), spec
    assert _version(keras.__version__) >= floor


# --- 9. CSV manifests parsed as CSV, with real line numbers ---------------------------------


def _images(folder: Path, *names: str) -> None:
    for name in names:
        solid(folder / name, RED)


def test_a_quoted_newline_stays_inside_its_cell(tmp_path):
    from fashionnet.data.sources import read_manifest

    _images(tmp_path, "a\nb.jpg", "c.jpg")
    (tmp_path / "m.csv").write_text('path,color\n"a\nb.jpg","two\nlines"\nc.jpg,blue\n')
    records, _ = read_manifest(tmp_path / "m.csv")
    # splitlines() used to give the path 'ab.jpg' and the label 'twolines'
    assert [r.path.name for r in records] == ["a\nb.jpg", "c.jpg"]
    assert [r.labels["color"] for r in records] == ["two\nlines", "blue"]


@pytest.mark.parametrize("char", ["\f", "\v", "\u2028", "\u2029", "\x1c", "\x85"])
def test_form_feeds_and_unicode_line_separators_do_not_split_rows(tmp_path, char):
    from fashionnet.data.sources import read_manifest

    _images(tmp_path, "a.jpg", "b.jpg")
    (tmp_path / "m.csv").write_text(f"path,color\na.jpg,red{char}dish\nb.jpg,blue\n",
                                    encoding="utf-8")
    records, _ = read_manifest(tmp_path / "m.csv")
    assert len(records) == 2 and records[0].labels["color"] == f"red{char}dish"
    assert records[1].labels["color"] == "blue"


def test_csv_errors_name_the_real_line(tmp_path):
    from fashionnet.data.sources import read_manifest

    _images(tmp_path, "a.jpg")
    (tmp_path / "m.csv").write_text('path,color\na.jpg,"multi\nline\nred"\n\n,blue\n')
    with pytest.raises(FashionNetError, match=r"m\.csv: line 6 has an empty 'path'"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text('path,color\na.jpg,red\na.jpg,red,extra\n')
    with pytest.raises(FashionNetError, match=r"line 3 has 3 cells but the header has 2"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text('path,color\na.jpg\n')
    with pytest.raises(FashionNetError, match=r"line 2 has 1 cells but the header has 2"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text('path,color,color\na.jpg,red,blue\n')
    with pytest.raises(FashionNetError, match=r"line 1: the header repeats"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text('path,color\na.jpg,red\na.jpg,"red"dish\n')
    with pytest.raises(FashionNetError, match=r"m\.csv: line 3: malformed CSV"):
        read_manifest(tmp_path / "m.csv")


def test_jsonl_and_json_errors_name_the_real_line(tmp_path):
    from fashionnet.data.sources import read_manifest

    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "color": "red"}\n\n{"path": "b.jpg",\n')
    with pytest.raises(FashionNetError, match=r"m\.jsonl: line 3: invalid JSON"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "color": "red"}\n["b.jpg", "blue"]\n')
    with pytest.raises(FashionNetError, match=r"line 2: expected an object, not list"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "color": "red"}\n'
                                      '{"path": "b.jpg", "color": {"r": 1}}\n')
    with pytest.raises(FashionNetError, match=r"line 2: 'color' must be a label or a list"):
        read_manifest(tmp_path / "m.jsonl")
    rows = '[\n  {"path": "a.jpg", "color": "red"},\n  {"path": "", "color": "blue"}\n]'
    (tmp_path / "m.json").write_text(rows)
    with pytest.raises(FashionNetError, match=r"m\.json: line 3 has an empty 'path'"):
        read_manifest(tmp_path / "m.json")
    (tmp_path / "m.json").write_text('[\n{"path": "a.jpg",\n "color": red}]')
    with pytest.raises(FashionNetError, match=r"invalid JSON \(.*line 3"):
        read_manifest(tmp_path / "m.json")


# --- 10. manifest paths stay in the manifest's folder ---------------------------------------


@pytest.mark.parametrize("image", ["../secret.jpg", "img/../../secret.jpg", "/etc/passwd",
                                   "..", "img/./../../x.jpg"])
def test_paths_leaving_the_manifest_folder_are_refused_naming_the_row(tmp_path, image):
    from fashionnet.data.sources import read_dataset

    data = tmp_path / "data"
    _images(data, "a.jpg")
    (data / "m.csv").write_text(f"path,color\na.jpg,red\n{image},blue\n")
    with pytest.raises(FashionNetError, match=r"m\.csv: line 3: path .* leaves the manifest's "
                                              r"folder; pass --allow-outside"):
        read_dataset(data / "m.csv")
    records, _ = read_dataset(data / "m.csv", allow_outside=True)
    assert len(records) == 2


def test_paths_inside_the_folder_still_work(tmp_path):
    from fashionnet.data.sources import read_dataset

    _images(tmp_path / "data", "img/a.jpg")
    (tmp_path / "data" / "m.csv").write_text("path,color\nimg/./a.jpg,red\nimg/x/../a.jpg,blue\n")
    records, _ = read_dataset(tmp_path / "data" / "m.csv")
    assert {r.path for r in records} == {(tmp_path / "data" / "img" / "a.jpg").resolve()}


def test_train_allow_outside_flag(tmp_path, capsys):
    for i in range(4):
        solid(tmp_path / "shared" / f"r{i}.jpg", RED)
        solid(tmp_path / "shared" / f"b{i}.jpg", (20, 20, 220))
    rows = "".join(f"../shared/r{i}.jpg,red,dress\n../shared/b{i}.jpg,blue,shirt\n"
                   for i in range(4))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "m.csv").write_text("path,color,category\n" + rows)
    args = ["train", "--dataset", tmp_path / "data" / "m.csv", "--epochs", "1",
            "--input-size", "32", "--no-cache", "--no-dedupe", "--quiet", "--split", "recipe",
            "--backbone", "scratch"]
    code, _, err = run_cli(capsys, *args, "--output", tmp_path / "run")
    assert code == 2 and one_line_error(err) and "line 2" in err and "--allow-outside" in err
    code, _, err = run_cli(capsys, *args, "--output", tmp_path / "run", "--allow-outside")
    assert code == 0, err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_in_a_manifest_is_one_skipped_file_not_a_hang(tmp_path):
    import threading

    from fashionnet.data.sources import read_manifest

    _images(tmp_path, "a.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "m.csv").write_text("path,color\na.jpg,red\npipe.jpg,blue\n")
    records, _ = read_manifest(tmp_path / "m.csv")
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("out", decode_many(
        [r.path for r in records], 16, progress=False, cache=False)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        with open(tmp_path / "pipe.jpg", "wb"):
            pass
        pytest.fail("a FIFO in the manifest hung decoding")
    assert result["out"].kept.tolist() == [0]
    assert "not a regular file" in result["out"].failures[0]


# --- 13. smaller: TOML escaping, tiny datasets, strict JSON ----------------------------------


@pytest.mark.parametrize("folder_name", ['we"ird', "back\\slash", "new\nline", "tab\there",
                                         'x"\nholdout = ["pwned"]\n#'])
def test_init_config_escapes_the_dataset_path(tmp_path, capsys, folder_name):
    from fashionnet.config import TrainConfig

    data = tmp_path / folder_name
    for combo in ("red_dress", "blue_shirt"):
        solid(data / combo / "a.jpg", RED)
    code, out, err = run_cli(capsys, "init-config", "--dataset", data, "--output",
                             tmp_path / "f.toml")
    assert code == 0, err
    config = TrainConfig.from_toml(tmp_path / "f.toml")
    assert config.dataset == str(data) and config.holdout == []


def test_init_config_keeps_odd_labels_inside_their_comment(tmp_path, capsys):
    from fashionnet.config import TrainConfig

    solid(tmp_path / "a.jpg", RED)
    rows = [{"path": "a.jpg", "color": "red\nepochs = 1"}, {"path": "a.jpg", "color": "blue"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    code, _, err = run_cli(capsys, "init-config", "--dataset", tmp_path / "m.jsonl", "--output",
                           tmp_path / "f.toml")
    assert code == 0, err
    assert TrainConfig.from_toml(tmp_path / "f.toml").epochs == TrainConfig().epochs


def test_a_tiny_dataset_warns_that_it_has_no_validation_or_test_split(caplog):
    from fashionnet.data.sources import Record
    from fashionnet.data.splits import split_records
    from fashionnet.heads import HeadSpec

    heads = [HeadSpec("color", ["blue", "red"], branch="color")]
    records = [Record(Path(f"{i}.jpg"), {"color": c}) for i, c in enumerate(["red", "blue"])]
    with caplog.at_level(logging.WARNING, logger="fashionnet"):
        split = split_records(records, heads)
    assert len(split.val) == 0 and len(split.test) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "only 2 image(s)" in messages[0] and "test and validation split is empty" in messages[0]
    caplog.clear()
    many = [Record(Path(f"{i}.jpg"), {"color": ["red", "blue"][i % 2]}) for i in range(40)]
    with caplog.at_level(logging.WARNING, logger="fashionnet"):
        split_records(many, heads)
    assert not caplog.records


# --- Server: 1, 2, 4 and the start-up check of 5 --------------------------------------------

server_only = pytest.mark.skipif(
    __import__("importlib").util.find_spec("fastapi") is None, reason="needs fashionnet[serve]")


def jpeg_bytes(color=RED, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from fashionnet import load

    return load(tiny_bundle.bundle.path, backend="keras")


def make_app(predictor, **options):
    from fashionnet.server.app import create_app

    options = {"max_bytes": 200_000, "max_batch": 4, **options}
    return create_app(predictor, **options)


async def asgi(app, path, chunks, headers, *, disconnect=False):
    """Drive the ASGI app by hand: ``chunks`` is an iterator of body chunks, consumed lazily.

    Returns (status, headers, body, bytes the app pulled from the client).
    """
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    pulled = 0
    iterator = iter(chunks)
    done = False
    sent = []

    async def receive():
        nonlocal pulled, done
        if done:
            await __import__("asyncio").sleep(3600)
        try:
            chunk = next(iterator)
        except StopIteration:
            done = True
            if disconnect:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": False}
        if chunk is None:  # a client gone silent
            await __import__("asyncio").sleep(3600)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict((k.decode(), v.decode()) for k, v in start["headers"]), body, pulled


def multipart_stream(parts: list[tuple[str, str, int]], boundary: str = "XyZ",
                     chunk: int = 65536):
    """Lazily yield a multipart body of (field, filename, size) parts of filler bytes."""
    for field, filename, size in parts:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
               f"filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        left = size
        while left > 0:
            n = min(chunk, left)
            yield b"\xff" * n
            left -= n
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


MULTIPART = {"content-type": "multipart/form-data; boundary=XyZ"}


@server_only
def test_a_huge_multipart_file_is_refused_while_streaming(predictor, monkeypatch):
    import asyncio
    import tempfile

    spooled = []
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile",
                        lambda *a, **k: spooled.append(1) or (_ for _ in ()).throw(AssertionError))
    app = make_app(predictor)
    body = multipart_stream([("file", "huge.jpg", 300_000_000)])
    status, _, text, pulled = asyncio.run(asgi(app, "/v1/predict", body, MULTIPART))
    assert status == 413 and b"huge.jpg: upload is over the limit of 200000" in text
    assert pulled < 200_000 + 2 * 65536  # stopped at the limit, not after 300 MB
    assert spooled == [] and app.state.budget.used == 0


@server_only
def test_a_batch_over_the_request_limit_is_refused_while_streaming(predictor):
    import asyncio

    app = make_app(predictor, max_request_bytes=500_000)
    body = multipart_stream([("files", f"{i}.jpg", 150_000) for i in range(8)])
    status, _, text, pulled = asyncio.run(asgi(app, "/v1/predict/batch", body, MULTIPART))
    assert status == 413 and b"over the limit of 500000 bytes" in text
    assert pulled < 500_000 + 2 * 65536
    body = multipart_stream([("files", f"{i}.jpg", 1000) for i in range(50)])
    status, _, text, pulled = asyncio.run(asgi(app, "/v1/predict/batch", body, MULTIPART))
    assert status == 413 and b"batch limit of 4" in text and pulled < 5 * 1200 + 65536


@server_only
def test_uploads_in_flight_share_one_memory_budget(predictor):
    import asyncio

    app = make_app(predictor, max_buffered_bytes=100_000)
    body = multipart_stream([("file", "a.jpg", 150_000)])
    status, headers, text, _ = asyncio.run(asgi(app, "/v1/predict", body, MULTIPART))
    assert status == 503 and "retry-after" in headers and b"busy" in text


@server_only
def test_a_silent_client_is_cut_off_after_the_read_timeout(predictor):
    import asyncio
    import time

    app = make_app(predictor, read_timeout=0.3)
    started = time.perf_counter()
    status, _, text, _ = asyncio.run(asgi(app, "/v1/predict", iter([b"\xff\xd8", None]),
                                          {"content-type": "image/jpeg"}))
    assert status == 408 and b"stalled" in text and time.perf_counter() - started < 5


@server_only
def test_malformed_multipart_bodies_are_400_not_500(predictor):
    import asyncio

    app = make_app(predictor)
    for body in ([b"garbage without boundaries"],
                 [b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nab"],
                 [b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nx\r\n--XyZ--\r\n"]):
        status, _, text, _ = asyncio.run(asgi(app, "/v1/predict", iter(body), MULTIPART))
        assert status == 400 and b"invalid multipart body" in text, text
    status, _, text, _ = asyncio.run(asgi(app, "/v1/predict", iter([b"x"]),
                                          {"content-type": "multipart/form-data"}))
    assert status == 400


def _slow_decode(predictor, monkeypatch, seconds: float):
    real = type(predictor).decode

    def slow(self, source):
        import time

        time.sleep(seconds)
        return real(self, source)

    monkeypatch.setattr(type(predictor), "decode", slow)


@server_only
def test_decoding_runs_off_the_event_loop(predictor, monkeypatch):
    import asyncio
    import time

    import httpx

    app = make_app(predictor)
    _slow_decode(predictor, monkeypatch, 1.5)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            started = time.perf_counter()
            slow = asyncio.create_task(client.post(
                "/v1/predict", content=jpeg_bytes(), headers={"content-type": "image/jpeg"}))
            await asyncio.sleep(0.2)
            health = await client.get("/healthz")
            answered = time.perf_counter() - started
            return (await slow), health, answered

    predicted, health, answered = asyncio.run(scenario())
    assert predicted.status_code == 200 and health.status_code == 200
    # The decode takes 1.5 s: a blocked event loop could not answer /healthz before it ends.
    assert answered < 1.0, f"/healthz answered {answered:.2f} s after the slow upload began"


@server_only
def test_a_full_queue_answers_503_with_retry_after(predictor, monkeypatch):
    import asyncio

    import httpx

    app = make_app(predictor, workers=1, queue=1)
    _slow_decode(predictor, monkeypatch, 0.8)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(client.post(
                "/v1/predict", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
                for _ in range(5)))

    responses = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 2 and statuses.count(503) == 3, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]


@server_only
def test_a_request_over_the_time_limit_is_answered_and_the_server_recovers(predictor, monkeypatch):
    from fastapi.testclient import TestClient

    app = make_app(predictor, request_timeout=0.3, workers=1, queue=1)
    client = TestClient(app, raise_server_exceptions=False)
    _slow_decode(predictor, monkeypatch, 1.0)
    r = client.post("/v1/predict", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 503 and "longer than the limit of 0.3 s" in r.json()["error"]
    assert "retry-after" in r.headers
    monkeypatch.undo()
    import time

    time.sleep(1.0)  # the timed-out job finishes and gives its slot back
    assert app.state.pool.pending == 0
    r = client.post("/v1/predict", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200


@server_only
def test_the_default_pixel_cap_is_far_below_64m_and_checked_before_decoding(predictor, monkeypatch):
    from fastapi.testclient import TestClient
    from PIL import ImageFile

    from fashionnet.server.app import SERVER_MAX_PIXELS

    assert SERVER_MAX_PIXELS <= 16_000_000
    app = make_app(predictor, max_bytes=5_000_000)
    assert app.state.limits.max_pixels == SERVER_MAX_PIXELS
    client = TestClient(app, raise_server_exceptions=False)
    buf = io.BytesIO()
    Image.new("I;16", (5000, 4000)).save(buf, "PNG")  # 20 M pixels of 16 bit, a few KB
    assert len(buf.getvalue()) < 200_000
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: loads.append(self.size) or real_load(self))
    r = client.post("/v1/predict", files={"file": ("bomb.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "over the limit of 16000000" in r.json()["error"]
    assert loads == []  # refused from the header: nothing was decoded


@server_only
def test_a_client_that_disconnects_mid_upload_is_one_log_line(predictor, caplog):
    import asyncio

    app = make_app(predictor)
    body = iter([b"\xff\xd8\xff" * 1000])
    with caplog.at_level(logging.DEBUG):
        status, _, _, _ = asyncio.run(asgi(app, "/v1/predict", body,
                                           {"content-type": "image/jpeg"}, disconnect=True))
    server_lines = [r for r in caplog.records if r.name.startswith("fashionnet.server")]
    assert len(server_lines) == 1 and "disconnected" in server_lines[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text and app.state.budget.used == 0


@server_only
def test_one_access_log_line_per_request_that_can_be_turned_off(predictor, caplog):
    from fastapi.testclient import TestClient

    client = TestClient(make_app(predictor), raise_server_exceptions=False)
    with caplog.at_level(logging.INFO, logger="fashionnet.access"):
        client.post("/v1/predict", content=jpeg_bytes(), headers={"content-type": "image/jpeg"})
        client.post("/v1/predict", content=b"nope", headers={"content-type": "image/jpeg"})
        client.get("/healthz")
    lines = [r.getMessage() for r in caplog.records if r.name == "fashionnet.access"]
    assert len(lines) == 3
    assert lines[0].startswith("POST /v1/predict 200 ") and " ms in=" in lines[0]
    assert f"in={len(jpeg_bytes())}" in lines[0] and "out=" in lines[0]
    assert lines[1].startswith("POST /v1/predict 400 ") and lines[2].startswith("GET /healthz 200")
    caplog.clear()
    quiet = TestClient(make_app(predictor, access_log_enabled=False))
    with caplog.at_level(logging.INFO, logger="fashionnet.access"):
        quiet.get("/healthz")
    assert not [r for r in caplog.records if r.name == "fashionnet.access"]


@server_only
def test_a_model_that_cannot_answer_refuses_to_start(bundle_copy, monkeypatch):
    from fashionnet import load
    from fashionnet.runtime import runners
    from fashionnet.server.app import create_app

    predictor = load(bundle_copy, backend="keras")
    real_call = runners.KerasRunner.__call__
    monkeypatch.setattr(runners.KerasRunner, "__call__",
                        lambda self, b: [np.full_like(o, np.nan) for o in real_call(self, b)])
    with pytest.raises(FashionNetError, match="non-finite"):
        create_app(predictor)
    monkeypatch.setattr(runners.KerasRunner, "__call__",
                        lambda self, b: [o[:, :2] for o in real_call(self, b)])
    with pytest.raises(FashionNetError, match=r"answered shape \(1, 2\), expected \(1, 4\)"):
        create_app(predictor)
