"""Export to ONNX, parity with Keras, and the TensorFlow-free runtime path."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fashionnet import load
from fashionnet.cli import main

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")


@pytest.fixture(scope="module")
def exported(tiny_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_bundle.bundle.path, path)
    assert main(["export", str(path), "--format", "onnx"]) == 0
    return path


def test_onnx_outputs_are_named_after_heads_with_labels_embedded(exported):
    import onnx

    from fashionnet.runtime.export import onnx_labels

    graph = onnx.load(str(exported / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["color_output", "category_output"]
    labels = onnx_labels(exported / "model.onnx")
    assert labels == json.loads((exported / "labels.json").read_text())


def test_onnx_matches_keras_on_100_images(exported, rng):
    images = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    keras_probs = load(exported, backend="keras").predict_probabilities(images)
    onnx_predictor = load(exported, backend="auto")
    assert onnx_predictor.backend == "onnx"
    for a, b in zip(keras_probs, onnx_predictor.predict_probabilities(images)):
        assert np.abs(a - b).max() < 1e-4


def test_runtime_classifies_with_tensorflow_and_keras_unimportable(exported, tiny_dataset,
                                                                   tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx"):
                    raise ImportError(f"{name} is blocked in this test")
        sys.meta_path.insert(0, _Block())
    """))
    image = sorted((tiny_dataset / "red_dress").iterdir())[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    code = ("import sys; from fashionnet.cli import main; rc = main(sys.argv[1:]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "classify", "--model", str(exported),
                           str(image), "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["heads"]["category"]["label"] in {
        "dress", "jeans", "shirt", "shoes"}
    check = subprocess.run([sys.executable, "-c", "import keras"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0  # the blocker really blocks


def _export_and_compare(path, rng) -> None:
    """Export a bundle to ONNX; its probabilities must match Keras's on 20 random images."""
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    assert main(["export", str(path), "--format", "onnx"]) == 0
    keras_probs = load(path, backend="keras").predict_probabilities(images)
    onnx_probs = load(path, backend="auto").predict_probabilities(images)
    for a, b in zip(keras_probs, onnx_probs):
        assert np.abs(a - b).max() < 1e-4


def test_local_contrast_model_exports_with_parity(tiny_dataset, tmp_path, rng):
    """Local contrast normalisation (two same-padded average pools) gives Keras's numbers in
    ONNX: TensorFlow and ONNX both leave the padding out of the average."""
    from fashionnet import TrainConfig, train

    config = TrainConfig(dataset=str(tiny_dataset), epochs=1, input_size=32, batch_size=16,
                         local_contrast=True, cache=False, backbone="scratch")
    path = tmp_path / "run"
    train(config, path, verbose=0)
    _export_and_compare(path, rng)


def test_random_backdrop_model_exports_with_parity(tiny_dataset, tmp_path, rng):
    """A training-only layer (random textures, a min-pool) leaves nothing in the exported
    graph that changes the numbers."""
    from fashionnet import TrainConfig, train

    config = TrainConfig(dataset=str(tiny_dataset), epochs=1, input_size=32, batch_size=16,
                         random_backdrop=1.0, cache=False, backbone="scratch")
    path = tmp_path / "run"
    train(config, path, verbose=0)
    _export_and_compare(path, rng)


@pytest.mark.parametrize("by_category", [False, True], ids=["one_map", "category_map"])
def test_garment_map_model_exports_with_parity(tiny_dataset, tmp_path, rng, by_category):
    """The colour head reading the category branch's map (a stopped gradient, a row slice past
    the mirror views, a bilinear resize; with ``by_category`` one map per category mixed by the
    category head's output) exports to ONNX and gives Keras's numbers."""
    from fashionnet import TrainConfig, train

    config = TrainConfig(dataset=str(tiny_dataset), epochs=1, input_size=32, batch_size=16,
                         garment_map=True, category_garment_map=by_category, cache=False,
                         backbone="scratch")
    path = tmp_path / "run"
    train(config, path, verbose=0)
    import keras

    model = keras.saving.load_model(path / "model.keras", compile=False, safe_mode=True)
    score = model.get_layer("color_garment_score")  # one epoch leaves it near zero: make it count
    score.set_weights([np.ones_like(w) for w in score.get_weights()])
    model.save(path / "model.keras")
    _export_and_compare(path, rng)


def test_int8_export_is_loadable_and_chosen_by_auto(exported, tiny_dataset, tmp_path):
    """`export --int8` writes model.int8.onnx (labels carried over, softmax left in float);
    auto runs it, fp32 still runs model.onnx, and the answers stay close."""
    from fashionnet.runtime.export import onnx_labels

    path = tmp_path / "run"
    shutil.copytree(exported, path)
    assert main(["export", str(path), "--int8", "--calibration", str(tiny_dataset)]) == 0
    assert onnx_labels(path / "model.int8.onnx") == onnx_labels(path / "model.onnx")
    fp32 = load(path, precision="fp32")
    auto = load(path)
    assert fp32.precision == "fp32" and auto.precision == "int8" and auto.backend == "onnx"
    photos = sorted(tiny_dataset.rglob("*.png")) + sorted(tiny_dataset.rglob("*.jpg"))
    images = np.stack([fp32.decode(p) for p in photos[::3]])
    for a, b in zip(fp32.predict_probabilities(images), auto.predict_probabilities(images)):
        assert a.shape == b.shape and np.mean(a.argmax(1) == b.argmax(1)) >= 0.9
        assert np.allclose(b.sum(axis=1), 1, atol=1e-5)  # still a softmax, not 8-bit steps
    (path / "model.int8.onnx").unlink()
    assert load(path).precision == "fp32"
    with pytest.raises(Exception, match="model.int8.onnx: missing"):
        load(path, precision="int8")


def test_export_prints_its_parity_and_keeps_an_existing_export(exported, tmp_path, capsys):
    path = tmp_path / "run"
    shutil.copytree(exported, path)
    before = (path / "model.onnx").read_bytes()
    capsys.readouterr()
    assert main(["export", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already exported" in err and "--overwrite" in err
    assert (path / "model.onnx").read_bytes() == before
    assert main(["export", str(path), "--overwrite"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("parity with Keras"))
    gaps = [float(part.split()[-1]) for part in line.split(": ", 1)[1].split(" (")[0].split(", ")]
    assert len(gaps) == 2 and all(0 <= g <= 1e-4 for g in gaps)
