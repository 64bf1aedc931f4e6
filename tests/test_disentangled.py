"""The levers for unseen combinations: a shape-blind colour head, a brightness-blind category
branch, counterfactual recolouring, the architecture defaults and the cosine schedule."""

import colorsys
import logging

import keras
import numpy as np
import pytest

from fashionnet.config import TrainConfig
from fashionnet.data.recolor import RecolorPlan, garment_mask, paint, recolor_batch
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec
from fashionnet.model.fashionnet import build_model
from fashionnet.model.layers import (
    ImageStandardization,
    LocalContrastNormalization,
    RandomBackdrop,
    RandomCutout,
    RandomGarmentTone,
    RandomPhotometric,
)
from fashionnet.training import model_for

HEADS = [HeadSpec("color", ["black", "blue", "red"], branch="color"),
         HeadSpec("category", ["dress", "jeans", "shirt", "shoes"], branch="gray")]


def _garment(size=32, color=(200, 30, 30), box=(8, 24, 10, 22)) -> np.ndarray:
    """A plain white backdrop with a textured rectangle 'garment'."""
    rng = np.random.default_rng(1)
    image = np.full((size, size, 3), 255, np.uint8)
    y0, y1, x0, x1 = box
    shade = rng.uniform(0.7, 1.0, (y1 - y0, x1 - x0, 1))
    image[y0:y1, x0:x1] = (np.array(color) * shade).astype(np.uint8)
    return image


def _hue(rgb) -> float:
    return 360 * colorsys.rgb_to_hsv(*(np.asarray(rgb, float) / 255))[0]


def test_colour_head_is_blind_to_shape():
    """Same pixels, rearranged inside the frame (a new shape, same colours): the colour output
    does not move, while the category branch, which sees shape, does."""
    model = build_model(HEADS, 32)
    rng = np.random.default_rng(0)
    image = _garment().astype(np.float32) / 255
    image[8:24, 10:22] += rng.uniform(-0.2, 0.2, (16, 12, 3)).astype(np.float32)
    image = np.clip(image, 0, 1)
    # The head sees 2x2 block averages: move whole blocks, keep the border ring (the backdrop).
    blocks = image[2:-2, 2:-2].reshape(14, 2, 14, 2, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 2, 2, 3)
    blocks = blocks[rng.permutation(len(blocks))]
    shuffled = image.copy()
    shuffled[2:-2, 2:-2] = blocks.reshape(14, 14, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(28, 28, 3)
    a = model(image[None], training=False)
    b = model(shuffled[None], training=False)
    np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-5)
    assert not np.allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-4)


def test_colour_head_is_small():
    model = build_model(HEADS, 32)
    colour_weights = sum(int(np.prod(w.shape)) for layer in model.layers
                         if layer.name.startswith("color_") for w in layer.weights)
    assert 0 < colour_weights < 25_000  # a few thousand weights per pixel MLP, none spatial


def test_category_branch_ignores_brightness_and_contrast():
    model = build_model(HEADS, 32)
    image = _garment().astype(np.float32)[None] / 255
    darker = image * 0.6 + 0.1  # affine change of every pixel: contrast and brightness
    a, b = model(image, training=False), model(darker, training=False)
    np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-4)


def test_photometric_augmentation_only_in_training():
    layer = RandomPhotometric(seed=3)
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    assert y.shape == x.shape and not np.allclose(y, x) and y.min() >= 0 and y.max() <= 1
    z = np.asarray(ImageStandardization()(x))
    np.testing.assert_allclose(z.mean(axis=(1, 2, 3)), 0, atol=1e-5)


def test_shape_jitter_moves_only_the_category_input_and_only_in_training():
    """Mirror/shift/zoom reach the category branch in training; inference and the colour head
    (which pools over pixels, so has nothing to gain) never see them."""
    model = build_model(HEADS, 32, mirror_average=False)  # one view per image at inference
    jittered = keras.Model(model.input, model.get_layer("gray_shape_jitter").output)
    gray = keras.Model(model.input, model.get_layer("grayscale").output)
    x = np.stack([_garment(box=(4, 20, 2, 14)), _garment(box=(10, 30, 16, 30))]).astype(
        np.float32) / 255
    np.testing.assert_array_equal(np.asarray(jittered(x, training=False)),
                                  np.asarray(gray(x, training=False)))
    moved = [not np.allclose(np.asarray(jittered(x, training=True)), np.asarray(gray(x)))
             for _ in range(3)]
    assert all(moved)
    colour = keras.Model(model.input, model.outputs[0])
    np.testing.assert_allclose(np.asarray(colour(x, training=True)),
                               np.asarray(colour(x, training=False)), atol=1e-6)


def test_shape_jitter_can_be_turned_off_and_on():
    """--no-shape-jitter gives back the previous default; the recipe gets it only if asked."""
    from fashionnet.cli import _config_from_args, build_parser

    def names(model):
        return {layer.name for layer in model.layers}

    assert "gray_shape_jitter" not in names(build_model(HEADS, 32, shape_jitter=False))
    assert "gray_shape_jitter" not in names(build_model(HEADS, 32, "recipe"))
    assert "gray_shape_jitter" in names(build_model(HEADS, 32, "recipe", shape_jitter=True))
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", "--no-shape-jitter"])
    assert _config_from_args(args).shape_jitter is False


def _mirror_free_twin(model, **kwargs):
    """The same network and weights without mirror averaging."""
    twin = build_model(kwargs.pop("heads", HEADS), 32, mirror_average=False, **kwargs)
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return twin


def test_mirror_average_predicts_from_the_image_and_its_mirror_image():
    """At inference the category output is the mean of the twin's outputs on the image and on
    its mirror image; the colour output is the twin's; training sees one view per image."""
    model = build_model(HEADS, 32)
    twin = _mirror_free_twin(model)
    x = np.stack([_garment(box=(4, 20, 2, 14)), _garment(box=(10, 30, 16, 30), color=(20, 20, 200))]
                 ).astype(np.float32) / 255
    colour, category = (np.asarray(o) for o in model(x, training=False))
    plain = [np.asarray(o) for o in twin(x, training=False)]
    mirrored = [np.asarray(o) for o in twin(x[:, :, ::-1], training=False)]
    np.testing.assert_allclose(category, (plain[1] + mirrored[1]) / 2, atol=1e-6)
    assert not np.allclose(plain[1], mirrored[1], atol=1e-4)  # the mirror really counted
    np.testing.assert_allclose(colour, plain[0], atol=1e-6)
    assert [tuple(o.shape) for o in model(x, training=True)] == [(2, 3), (2, 4)]
    views = model.get_layer("gray_mirror_views")
    np.testing.assert_array_equal(np.asarray(views(x[..., :1], training=True)), x[..., :1])
    assert tuple(views(x[..., :1], training=False).shape) == (4, 32, 32, 1)


def test_mirror_average_covers_every_head_of_the_category_branch():
    """Two heads on the grayscale branch, one multi-label: both average their own views."""
    heads = [HeadSpec("color", ["black", "red"], branch="color"),
             HeadSpec("category", ["dress", "shoes"], branch="gray"),
             HeadSpec("occasion", ["party", "work", "sport"], kind="multi", branch="gray")]
    model = build_model(heads, 32)
    twin = _mirror_free_twin(model, heads=heads)
    x = np.random.default_rng(3).random((3, 32, 32, 3), dtype=np.float32)
    both = [(np.asarray(a) + np.asarray(b)) / 2
            for a, b in zip(twin(x, training=False), twin(x[:, :, ::-1], training=False))]
    for got, want in zip(list(model(x, training=False))[1:], both[1:]):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


def test_mirror_average_can_be_turned_off_and_on():
    from fashionnet.cli import _config_from_args, build_parser

    def names(model):
        return {layer.name for layer in model.layers}

    assert "gray_mirror_views" in names(build_model(HEADS, 32))
    assert "gray_mirror_views" not in names(build_model(HEADS, 32, mirror_average=False))
    assert "gray_mirror_views" not in names(build_model(HEADS, 32, "recipe"))
    assert "gray_mirror_views" not in names(model_for(TrainConfig(
        backbone="scratch", mirror_average=False, input_size=32), HEADS))
    assert TrainConfig().mirror_average
    assert TrainConfig(architecture="recipe").mirror_average is False
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", "--no-mirror-average"])
    assert _config_from_args(args).mirror_average is False


def test_cutout_paints_one_flat_rectangle_and_only_in_training():
    x = np.random.default_rng(0).random((16, 32, 32, 1)).astype(np.float32)
    out = np.asarray(RandomCutout(rate=1.0, seed=1)(x, training=True))
    for image, before in zip(out[..., 0], x[..., 0]):
        changed = image != before
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert 0.2 * 32 - 2 <= len(rows) <= 0.45 * 32 + 1 and 0.2 * 32 - 2 <= len(cols) <= 0.45 * 32 + 1
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and changed.sum() == box.size  # one solid rectangle, nothing else
        assert np.unique(image[changed]).size == 1  # painted one flat gray
    np.testing.assert_array_equal(np.asarray(RandomCutout(1.0)(x, training=False)), x)
    never = np.asarray(RandomCutout(rate=0.0)(x, training=True))
    np.testing.assert_array_equal(never, x)


def test_cutout_is_off_by_default_and_reaches_the_category_branch_only_when_asked(tmp_path):
    from fashionnet.cli import _config_from_args, build_parser

    assert "gray_cutout" not in {layer.name for layer in build_model(HEADS, 32).layers}
    # what `train` builds
    trained = model_for(TrainConfig(backbone="scratch", cutout=0.25, input_size=32), HEADS)
    assert trained.get_layer("gray_cutout").rate == 0.25
    build_model(HEADS, 32, cutout=0.5).save(tmp_path / "m.keras")
    model = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    assert model.get_layer("gray_cutout").rate == 0.5
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", "--cutout", "0.5"])
    assert _config_from_args(args).cutout == 0.5
    with pytest.raises(FashionNetError, match="cutout must be at least 0 and at most 1"):
        TrainConfig(cutout=1.5)


def test_category_dropout_sets_the_grayscale_blocks_dropout_and_zero_removes_it(tmp_path):
    from fashionnet.cli import _config_from_args, build_parser

    def block_rates(model) -> list[float]:
        return [model.get_layer(f"gray{i}_drop").rate for i in (1, 2, 3)
                if f"gray{i}_drop" in {layer.name for layer in model.layers}]

    recipe = build_model(HEADS, 32, variant="recipe")
    assert block_rates(recipe) == [0.25, 0.25, 0.25]  # the recipe, exactly
    assert TrainConfig().category_dropout == 0.0
    assert TrainConfig(architecture="recipe").category_dropout == 0.25
    assert block_rates(build_model(HEADS, 32)) == []  # the default: none
    assert block_rates(model_for(TrainConfig(backbone="scratch", category_dropout=0.1,
                                             input_size=32), HEADS)) == [
        0.1, 0.1, 0.1]
    bare = build_model(HEADS, 32, category_dropout=0.0)
    assert block_rates(bare) == []
    assert block_rates(build_model(HEADS, 32, category_dropout=0.25)) == [0.25, 0.25, 0.25]
    # only the grayscale branch: the recipe's colour branch keeps its dropout
    colour = build_model(HEADS, 32, variant="recipe", category_dropout=0.0)
    assert block_rates(colour) == [] and colour.get_layer("color1_drop").rate == 0.25
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    bare.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    for a, b in zip(bare(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", "--category-dropout", "0.1"])
    assert _config_from_args(args).category_dropout == 0.1
    with pytest.raises(FashionNetError, match="category_dropout must be at least 0 and below 1"):
        TrainConfig(category_dropout=-0.1)


def _gray_garment(level: float, size: int = 32) -> np.ndarray:
    """A white backdrop and a shaded gray 'garment' whose pixels ramp left to right."""
    x = np.ones((size, size, 1), np.float32)
    x[8:24, 10:22, 0] = level * np.linspace(0.8, 1.2, 12)[None, :]
    return x


def test_garment_tone_repaints_the_garment_alone_keeping_its_shading():
    """Dark garments come out at many brightness levels, light and dark; the backdrop never
    moves, and the garment's pixels keep their order (its shading)."""
    x = np.stack([_gray_garment(0.25)] * 64)
    out = np.asarray(RandomGarmentTone(rate=1.0, seed=2)(x, training=True))
    np.testing.assert_array_equal(out[:, :8], x[:, :8])  # backdrop rows untouched
    np.testing.assert_array_equal(out[:, :, :10], x[:, :, :10])
    garment = out[:, 8:24, 10:22, 0]
    means = garment.mean(axis=(1, 2))
    assert means.min() < 0.2 and means.max() > 0.8  # darker and much lighter copies
    steps = np.diff(garment[:, 4], axis=1)
    assert (steps >= 0).all()  # the ramp (shading) keeps its order...
    unclipped = garment[:, 4].max(axis=1) < 1.0
    assert unclipped.sum() > 32 and (steps[unclipped] > 0).all()  # ...strictly, below white
    np.testing.assert_array_equal(np.asarray(RandomGarmentTone(1.0)(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(RandomGarmentTone(0.0)(x, training=True)), x)


def test_garment_tone_leaves_images_without_a_clear_backdrop_alone():
    """A close-up (the garment fills the frame: nothing differs from the border), or a blank
    frame, is not repainted."""
    rng = np.random.default_rng(0)
    close_up = (0.3 + rng.uniform(-0.03, 0.03, (4, 32, 32, 1))).astype(np.float32)
    blank = np.ones((4, 32, 32, 1), np.float32)
    for x in (close_up, blank):
        np.testing.assert_array_equal(
            np.asarray(RandomGarmentTone(rate=1.0, seed=0)(x, training=True)), x)


def _assert_a_category_branch_training_layer(tmp_path, setting: str, bad: float) -> None:
    """A training-only layer of the category branch, ``gray_<setting>``, built at rate 0.5:
    saved and loaded in safe mode with its rate; the colour head's output is the same in
    training and inference (it never sees the layer); the model's plain call is the inference
    call (what an export traces); the CLI flag sets it; an out-of-range rate is refused."""
    from fashionnet.cli import _config_from_args, build_parser

    build_model(HEADS, 32, **{setting: 0.5}).save(tmp_path / "m.keras")
    model = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    assert model.get_layer(f"gray_{setting}").rate == 0.5
    x = _garment()[None].astype(np.float32) / 255
    colour = keras.Model(model.input, model.outputs[0])  # the colour head never sees it
    np.testing.assert_allclose(np.asarray(colour(x, training=True)),
                               np.asarray(colour(x, training=False)), atol=1e-6)
    for got, want in zip(model(x), model(x, training=False)):  # what an export traces
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    flag = "--" + setting.replace("_", "-")
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", flag, "0.5"])
    assert getattr(_config_from_args(args), setting) == 0.5
    with pytest.raises(FashionNetError, match=f"{setting} must be at least 0 and at most 1"):
        TrainConfig(**{setting: bad})


def test_garment_tone_is_off_by_default_and_reaches_the_category_branch_only_when_asked(
        tmp_path):
    assert "gray_garment_tone" not in {layer.name for layer in build_model(HEADS, 32).layers}
    trained = model_for(TrainConfig(backbone="scratch", garment_tone=0.25, input_size=32), HEADS)
    assert trained.get_layer("gray_garment_tone").rate == 0.25
    _assert_a_category_branch_training_layer(tmp_path, "garment_tone", bad=-0.1)


def test_random_backdrop_replaces_the_backdrop_and_keeps_the_garment():
    """A dark garment on white: the backdrop becomes many different textures (levels and
    patterns), the garment's inside does not move, and an edge pixel half garment, half
    backdrop lands half way between the garment and its new backdrop (no light halo)."""
    x = np.stack([_gray_garment(0.2)] * 64)
    x[:, 8:24, 9] = (0.2 * 0.8 + 1.0) / 2  # an anti-aliased column left of the garment
    out = np.asarray(RandomBackdrop(rate=1.0, seed=3)(x, training=True))
    np.testing.assert_allclose(out[:, 9:23, 11:21], x[:, 9:23, 11:21], atol=1e-6)
    corner = out[:, :6, :6, 0]
    assert np.ptp(corner.mean(axis=(1, 2))) > 0.5  # dark and light backdrops
    assert np.median(corner.std(axis=(1, 2))) > 0.01  # textured, not flat
    outside = out[:, 8:24, 6]
    halfway = (0.2 * 0.8 + outside) / 2
    assert np.abs(out[:, 8:24, 9] - halfway).mean() < 0.06
    np.testing.assert_array_equal(np.asarray(RandomBackdrop(1.0)(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(RandomBackdrop(0.0)(x, training=True)), x)
    half = np.asarray(RandomBackdrop(rate=0.5, seed=1)(x, training=True))
    assert 16 < (np.abs(half - x).max(axis=(1, 2, 3)) > 0).sum() < 48


def test_random_backdrop_leaves_close_ups_and_blank_frames_alone():
    rng = np.random.default_rng(0)
    close_up = (0.3 + rng.uniform(-0.03, 0.03, (4, 32, 32, 1))).astype(np.float32)
    blank = np.ones((4, 32, 32, 1), np.float32)
    for x in (close_up, blank):
        np.testing.assert_array_equal(
            np.asarray(RandomBackdrop(rate=1.0, seed=0)(x, training=True)), x)


def test_random_backdrop_is_on_by_default_and_reaches_the_category_branch_only(tmp_path):
    assert build_model(HEADS, 32).get_layer("gray_random_backdrop").rate == 0.5
    assert TrainConfig().random_backdrop == 0.5
    recipe = TrainConfig(architecture="recipe")
    assert recipe.random_backdrop == 0.0  # the recipe trains exactly as published
    assert "gray_random_backdrop" not in {layer.name for layer in model_for(recipe, HEADS).layers}
    assert "gray_random_backdrop" not in {
        layer.name for layer in build_model(HEADS, 32, random_backdrop=0.0).layers}
    trained = model_for(TrainConfig(backbone="scratch", random_backdrop=0.25, input_size=32), HEADS)
    assert trained.get_layer("gray_random_backdrop").rate == 0.25
    _assert_a_category_branch_training_layer(tmp_path, "random_backdrop", bad=1.5)


def _bar_and_square(square: float) -> np.ndarray:
    """A [0, 1] gray image on a white backdrop: a black bar, and a square at level ``square``."""
    image = np.ones((1, 64, 64, 1), np.float32)
    image[0, 8:56, 4:12] = 0.05
    image[0, 20:44, 30:54] = square
    return image


def _steps(x: np.ndarray) -> tuple[float, float]:
    """How strong the square's left edge is, and the bar's right edge (mean absolute step)."""
    x = np.asarray(x)[0, :, :, 0]
    return (float(np.abs(x[24:40, 31] - x[24:40, 28]).mean()),
            float(np.abs(x[24:40, 14] - x[24:40, 5]).mean()))


def test_local_contrast_makes_a_faint_outline_count_like_a_sharp_one():
    standardize = ImageStandardization()
    local = LocalContrastNormalization(9)
    faint, sharp = _bar_and_square(0.95), _bar_and_square(0.2)
    # Beside the same black bar, a white square on white has an outline 5 % as strong as the
    # bar's when the image is standardised as a whole, and 24 % after local contrast
    # normalisation (the floor, the image's mean spread, stops it from going further).
    square, bar = _steps(standardize(faint))
    assert square / bar < 0.1
    square, bar = _steps(standardize(local(faint)))
    assert square / bar > 0.2
    # A dark square, whose outline was strong already, stays about as strong as the bar.
    square, bar = _steps(standardize(local(sharp)))
    assert 0.8 < square / bar < 1.5
    # Flat backdrop stays flat: JPEG-like noise is not blown up to the garment's strength.
    noisy = faint + np.random.default_rng(0).normal(0, 0.003, faint.shape).astype(np.float32)
    out = np.abs(np.asarray(local(noisy))[0, :, :, 0])
    assert out[2:6, 58:62].mean() < 0.2 * out[24:40, 29:31].mean()


def test_local_contrast_is_off_by_default_and_only_on_the_category_branch(tmp_path, caplog):
    from fashionnet.cli import _config_from_args, build_parser
    from fashionnet.model.layers import local_contrast_window

    assert "gray_local_contrast" not in {layer.name for layer in build_model(HEADS, 32).layers}
    assert TrainConfig().local_contrast is False
    trained = model_for(TrainConfig(backbone="scratch", local_contrast=True, input_size=64), HEADS)
    assert trained.get_layer("gray_local_contrast").window == local_contrast_window(64) == 9
    assert local_contrast_window(96) == 13 and local_contrast_window(32) == 5
    build_model(HEADS, 32, local_contrast=True).save(tmp_path / "m.keras")
    model = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    assert model.get_layer("gray_local_contrast").window == 5
    x = _garment()[None].astype(np.float32) / 255
    plain = build_model(HEADS, 32)
    plain.set_weights(model.get_weights())  # same weights: only the category output may move
    np.testing.assert_allclose(np.asarray(model(x)[0]), np.asarray(plain(x)[0]), atol=1e-6)
    assert np.abs(np.asarray(model(x)[1]) - np.asarray(plain(x)[1])).max() > 1e-4
    with caplog.at_level(logging.WARNING, logger="fashionnet"):
        recipe = model_for(TrainConfig(architecture="recipe", local_contrast=True,
                                       input_size=32), HEADS)
    assert "local_contrast ignored" in caplog.text
    assert "gray_local_contrast" not in {layer.name for layer in recipe.layers}
    for flag, want in (("--local-contrast", True), ("--no-local-contrast", False)):
        args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                          "--backbone", "scratch", flag])
        assert _config_from_args(args).local_contrast is want


def _with_garment_map(score: float = 1.0, **kwargs):
    """A model with the garment map on, its map's score weights set to ``score``."""
    model = build_model(HEADS, 32, garment_map=True, **kwargs)
    layer = model.get_layer("color_garment_score")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.full_like(kernel, score), bias])
    return model


def test_garment_map_never_trains_the_category_branch():
    """The colour loss reaches the map's own score weights, never the grayscale trunk's
    (darkness must not become a category feature again)."""
    import tensorflow as tf

    model = _with_garment_map(0.05)
    x = np.stack([_garment(), _garment(color=(20, 20, 200))]).astype(np.float32) / 255
    with tf.GradientTape() as tape:
        colour = model(x, training=True)[0]
        loss = keras.ops.mean(keras.losses.categorical_crossentropy(np.eye(3)[[2, 1]], colour))
    gray = [w for layer in model.layers if layer.name.startswith("gray")
            for w in layer.trainable_weights]
    score = model.get_layer("color_garment_score").trainable_weights
    grads = tape.gradient(loss, gray + score)
    assert gray and all(g is None or not np.any(np.asarray(g)) for g in grads[:len(gray)])
    assert np.any(np.asarray(grads[len(gray)]))


def test_garment_map_moves_where_the_colour_head_looks_not_what_it_sees():
    """A map that starts at zero changes nothing; a trained one changes the colour output of a
    two-garment photo; and each image's answer is its own, whatever the batch (mirror averaging
    doubles the category branch's rows)."""
    plain = build_model(HEADS, 32, mirror_average=False)
    zero = _with_garment_map(0.0, mirror_average=False)
    for layer in plain.layers:
        if layer.weights:
            zero.get_layer(layer.name).set_weights(layer.get_weights())
    two = _garment(color=(200, 30, 30), box=(2, 14, 4, 28))
    two[16:30, 4:28] = _garment(color=(20, 20, 200), box=(16, 30, 4, 28))[16:30, 4:28]
    x = np.stack([two, _garment()]).astype(np.float32) / 255
    np.testing.assert_allclose(np.asarray(zero(x, training=False)[0]),
                               np.asarray(plain(x, training=False)[0]), atol=1e-6)
    mapped = _with_garment_map(1.0)
    for layer in plain.layers:
        if layer.weights:
            mapped.get_layer(layer.name).set_weights(layer.get_weights())
    batch = np.asarray(mapped(x, training=False)[0])
    for a, b in zip(mapped(x), mapped(x, training=False)):  # no layer leaks training=True
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert not np.allclose(batch[0], np.asarray(plain(x, training=False)[0])[0], atol=1e-4)
    for i in range(2):
        np.testing.assert_allclose(np.asarray(mapped(x[i:i + 1], training=False)[0])[0],
                                   batch[i], atol=1e-5)


def test_garment_map_moves_the_jitter_to_the_input_both_branches_read(tmp_path, caplog):
    from fashionnet.cli import _config_from_args, build_parser

    def names(model):
        return {layer.name for layer in model.layers}

    # what `train` builds
    model = model_for(TrainConfig(backbone="scratch", garment_map=True, input_size=32), HEADS)
    assert {"shape_jitter", "color_garment_score"} <= names(model)
    assert "gray_shape_jitter" not in names(model)
    assert "color_garment_score" not in names(build_model(HEADS, 32))  # off by default
    colour_only = [HEADS[0]]  # no category branch to read: no map, and `train` says so
    assert "color_garment_score" not in names(build_model(colour_only, 32, garment_map=True))
    with caplog.at_level("WARNING", logger="fashionnet"):
        model_for(TrainConfig(backbone="scratch", garment_map=True, input_size=32), colour_only)
    assert "garment_map ignored" in caplog.text
    assert "color_garment_score" not in names(build_model(HEADS, 32, "recipe", garment_map=True))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    x = _garment()[None].astype(np.float32) / 255
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", "--garment-map"])
    assert _config_from_args(args).garment_map is True


def test_category_map_mixes_one_map_per_category_by_the_prediction():
    from fashionnet.model.layers import CategoryMap

    maps = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    probabilities = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], np.float32)
    mixed = np.asarray(CategoryMap()([maps, probabilities]))
    assert mixed.shape == (2, 2, 2, 1)
    np.testing.assert_allclose(mixed[0, ..., 0], maps[0, ..., 1])  # a sure prediction: its map
    np.testing.assert_allclose(mixed[1, ..., 0], (maps[1, ..., 0] + maps[1, ..., 2]) / 2)


def test_category_garment_map_follows_the_category_head_and_never_trains_it():
    """The colour head pools over the map of the category the category head names, and the
    colour loss trains the map's score weights only: neither the grayscale trunk nor the
    category head it reads (colour would become a category cue again)."""
    import tensorflow as tf

    model = build_model(HEADS, 32, category_garment_map=True)
    assert model.output_names == ["color_output", "category_output"]  # the heads' order
    score = model.get_layer("color_garment_score")
    kernel, bias = score.get_weights()
    assert kernel.shape[-1] == len(HEADS[1].classes)  # one map per category
    score.set_weights([np.random.default_rng(0).normal(0, 0.2, kernel.shape), bias])
    probe = keras.Model(model.inputs, [model.get_layer("color_category_map").output,
                                       score.output, model.outputs[1]])
    x = np.stack([_garment(), _garment(color=(20, 20, 200), box=(4, 28, 12, 20))])
    picked, maps, category = (np.asarray(t) for t in probe(x.astype(np.float32) / 255))
    np.testing.assert_allclose(picked[..., 0], np.einsum("bhwk,bk->bhw", maps, category),
                               atol=1e-5)
    assert not np.allclose(picked[..., 0], maps[..., 0]) and not np.allclose(picked[..., 0],
                                                                             maps[..., 1])
    with tf.GradientTape() as tape:
        colour = model(x.astype(np.float32) / 255, training=True)[0]
        loss = keras.ops.mean(keras.losses.categorical_crossentropy(np.eye(3)[[2, 1]], colour))
    category_side = [w for layer in model.layers
                     if layer.name.startswith(("gray", "category")) for w in layer.trainable_weights]
    grads = tape.gradient(loss, category_side + score.trainable_weights)
    assert category_side
    assert all(g is None or not np.any(np.asarray(g)) for g in grads[:len(category_side)])
    assert np.any(np.asarray(grads[len(category_side)]))


def test_heads_are_built_in_their_order_unless_a_category_map_needs_otherwise():
    """Built (so initialised) in the heads' order: the colour head first takes the same first
    random draws with or without a category head after it, so a seed reproduces the models
    earlier releases trained. Only the category-conditioned map builds the colour head last."""
    def pixel_kernel(heads, **kwargs):
        keras.utils.set_random_seed(3)
        return build_model(heads, 32, **kwargs).get_layer("color_pixel1").get_weights()[0]

    more = [*HEADS, HeadSpec("fabric", ["cotton", "denim"], branch="gray")]
    np.testing.assert_array_equal(pixel_kernel(HEADS), pixel_kernel(HEADS[:1]))
    np.testing.assert_array_equal(pixel_kernel(HEADS, garment_map=True),
                                  pixel_kernel(more, garment_map=True))
    assert not np.array_equal(pixel_kernel(HEADS, category_garment_map=True),
                              pixel_kernel(more, category_garment_map=True))  # built after them


def test_category_garment_map_setting(tmp_path, caplog):
    from fashionnet.cli import _config_from_args, build_parser

    assert TrainConfig().category_garment_map is False  # off by default
    assert TrainConfig(backbone="scratch", category_garment_map=True).garment_map is True  # implied
    with pytest.raises(FashionNetError, match="category_garment_map needs garment_map"):
        TrainConfig(category_garment_map=True, garment_map=False)
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--backbone", "scratch", "--category-garment-map"])
    assert _config_from_args(args).category_garment_map is True
    assert _config_from_args(args).garment_map is True
    model = model_for(TrainConfig(backbone="scratch", category_garment_map=True, input_size=32), HEADS)
    assert "color_category_map" in {layer.name for layer in model.layers}
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False, safe_mode=True)
    x = _garment()[None].astype(np.float32) / 255
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # A multi-label category head names no one garment: the plain map, and `train` says so.
    tags = [HEADS[0], HeadSpec("category", ["dress", "shirt"], kind="multi", branch="gray")]
    with caplog.at_level("WARNING", logger="fashionnet"):
        plain = model_for(TrainConfig(backbone="scratch", category_garment_map=True, input_size=32), tags)
    assert "category_garment_map ignored" in caplog.text
    names = {layer.name for layer in plain.layers}
    assert "color_garment_score" in names and "color_category_map" not in names


def test_disentangled_model_round_trips_in_safe_mode(tmp_path):
    model = build_model(HEADS, 32)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = _garment()[None].astype(np.float32) / 255
    for a, b in zip(model(x, training=False), loaded(x, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_garment_mask_finds_the_garment_not_the_backdrop():
    mask = garment_mask(_garment())
    assert mask[8:24, 10:22].mean() > 0.95
    assert mask[:8].max() == 0 and mask[:, :10].max() == 0


@pytest.mark.parametrize("target", ["blue", "black", "white", "red", "green"])
def test_paint_moves_the_garment_to_the_target_colour(target):
    image = _garment(color=(30, 60, 200) if target == "red" else (200, 30, 30))
    out = paint(image, garment_mask(image), target, np.random.default_rng(0))
    garment = out[8:24, 10:22].reshape(-1, 3).astype(float).mean(axis=0)
    np.testing.assert_array_equal(out[:8], image[:8])  # backdrop untouched
    value = garment.max() / 255
    if target == "black":  # dark and grey
        assert value < 0.45 and garment.min() / garment.max() > 0.7
    elif target == "white":
        assert value > 0.8 and garment.min() / garment.max() > 0.85
    else:
        expected = {"blue": 218, "red": 0, "green": 125}[target]
        distance = min(abs(_hue(garment) - expected), 360 - abs(_hue(garment) - expected))
        assert distance < 25


def test_recolouring_moves_the_label_with_the_pixels():
    plan = RecolorPlan.for_classes(["black", "blue", "red"])
    images = np.stack([_garment(color=(200, 30, 30))] * 16)
    targets = np.zeros((16, 3), np.float32)
    targets[:, 2] = 1.0  # all red
    targets[3] = -1.0  # unknown colour: never repainted
    out, new = recolor_batch(images, targets, plan, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out[3], images[3])
    np.testing.assert_array_equal(new[3], targets[3])
    moved = [i for i in range(16) if i != 3]
    assert (new[moved].argmax(axis=1) != 2).all() and (new[moved].sum(axis=1) == 1).all()
    for i in moved:
        garment = out[i, 8:24, 10:22].reshape(-1, 3).astype(float).mean(axis=0)
        if new[i].argmax() == 0:  # black
            assert garment.max() < 0.45 * 255 and garment.min() / garment.max() > 0.7
        else:  # blue
            assert abs(_hue(garment) - 218) < 25
    np.testing.assert_array_equal(images[0], _garment(color=(200, 30, 30)))  # input kept


def test_painting_outside_the_label_set_masks_the_colour_label():
    """A copy painted in a colour the head lacks (green, white...) teaches the other heads
    only: its colour row becomes the missing-label row, and its pixels are a colour no class
    names."""
    plan = RecolorPlan.for_classes(["black", "Blue", "red", "grey"])
    assert {"white", "green", "brown"} <= set(plan.outside)
    assert not {"black", "blue", "red", "grey", "gray"} & set(plan.outside)
    images = np.stack([_garment(color=(200, 30, 30))] * 32)
    targets = np.zeros((32, 4), np.float32)
    targets[:, 2] = 1.0
    out, new = recolor_batch(images, targets, plan, 0.0, np.random.default_rng(0), outside=1.0)
    assert (new == -1.0).all()
    painted = [out[i, 8:24, 10:22].reshape(-1, 3).astype(float).mean(axis=0) for i in range(32)]
    assert all(np.abs(g - (200, 30, 30)).max() > 20 for g in painted)
    np.testing.assert_array_equal(out[:, :8], images[:, :8])  # backdrop untouched
    # Shares add up: about half in the label set (one-hot, moved), about a quarter outside.
    out, new = recolor_batch(np.stack([_garment()] * 400), np.tile(targets[:1], (400, 1)),
                             plan, 0.5, np.random.default_rng(1), outside=0.25)
    masked = (new[:, 0] == -1).sum()
    moved = ((new.sum(axis=1) == 1) & (new[:, 2] == 0)).sum()
    assert 70 < masked < 130 and 170 < moved < 230
    assert masked + moved + (new[:, 2] == 1).sum() == 400


def test_recolouring_skips_images_without_a_backdrop_and_unknown_colours():
    plan = RecolorPlan.for_classes(["black", "blue", "plaid"])
    assert plan.unknown == ["plaid"]
    assert RecolorPlan.for_classes(["plaid", "denim"]) is None
    full_frame = np.full((32, 32, 3), 90, np.uint8)
    assert plan.recolor(full_frame, 0, np.random.default_rng(0)) is None
    done = plan.recolor(_garment(), 0, np.random.default_rng(0))
    assert done is not None and done[1] == 1  # 'plaid' (index 2) is never a target


def test_architecture_brings_its_own_defaults_unless_given():
    default = TrainConfig()
    assert default.architecture == "disentangled" and default.recolor > 0
    assert default.lr_decay == "cosine" and not default.augment and default.precise_bn
    assert default.shape_jitter
    recipe = default.with_overrides(holdout=["x"]).with_overrides(architecture="recipe")
    assert recipe.shape_jitter is False
    assert (recipe.epochs, recipe.lr_decay, recipe.augment, recipe.recolor,
            recipe.bn_momentum, recipe.precise_bn, recipe.input_size) == (50, "recipe", False,
                                                                          0.0, 0.99, False, 96)
    assert recipe.holdout == ["x"]
    quick = TrainConfig().with_preset("quick").with_overrides(architecture="recipe")
    assert (quick.epochs, quick.input_size, quick.lr_decay, quick.augment,
            quick.precise_bn) == (12, 64, "cosine", False, True)
    with pytest.raises(FashionNetError, match="architecture"):
        TrainConfig(architecture="resnet")
    with pytest.raises(FashionNetError, match="recolor"):
        TrainConfig(recolor=2.0)
    assert default.recolor_outside == 0.0 and recipe.recolor_outside == 0.0
    with pytest.raises(FashionNetError, match="preset"):
        TrainConfig().with_preset("slow")


def test_recolor_outside_comes_from_the_command_line_and_reaches_the_batches(tmp_path):
    from fashionnet.cli import _config_from_args, build_parser
    from fashionnet.training import recoloring

    args = build_parser().parse_args(["train", "--dataset", str(tmp_path),
                                      "--output", str(tmp_path / "r"), "--recolor-outside", "0.3",
                                      "--recolor", "0"])
    config = _config_from_args(args)
    recolor = recoloring(HEADS, config)
    assert (recolor.output, recolor.probability, recolor.outside) == ("color_output", 0.0, 0.3)
    assert recoloring(HEADS, TrainConfig()).outside == 0.0
    assert recoloring(HEADS, TrainConfig(recolor=0.0)) is None
    with pytest.raises(FashionNetError, match="recolor_outside must be at least 0"):
        TrainConfig(recolor_outside=-0.5)


def test_balance_classes_weights_rare_categories_but_not_the_relabelled_colour_head():
    """In a leave-one-combination-out fold the held-out combination's category is left with
    half the images of the others; balanced weights stop the head leaning to the common one.
    The colour head that recolouring relabels keeps plain weights: its counts before painting
    are not the ones it trains on."""
    import dataclasses

    from fashionnet.cli import _config_from_args, build_parser
    from fashionnet.training import class_weight_vector, compile_model

    category = HEADS[1]
    targets = np.eye(4, dtype=np.float32)[[0] * 6 + [1] * 2 + [2] * 2]  # no shoes
    unlabelled = np.full((3, 4), -1.0, np.float32)  # missing labels count for nothing
    weights = class_weight_vector(category, np.concatenate([targets, unlabelled]), balance=True)
    assert weights == pytest.approx([10 / 24, 10 / 8, 10 / 8, 10 / 4])
    assert class_weight_vector(category, targets) is None
    table = dataclasses.replace(category, class_weights={"dress": 2.0})
    assert class_weight_vector(table, targets, balance=True) == [2.0, 1.0, 1.0, 1.0]
    tags = HeadSpec("tags", ["a", "b"], kind="multi")
    assert class_weight_vector(tags, np.ones((4, 2), np.float32), balance=True) is None

    config = TrainConfig(input_size=32)
    assert config.balance_classes and not TrainConfig(architecture="recipe").balance_classes
    colours = np.eye(3, dtype=np.float32)[[0] + [1] * 9]
    model = model_for(config, HEADS)
    compile_model(model, HEADS, config, {"color_output": colours, "category_output": targets},
                  relabelled="color_output")
    assert model.loss["color_output"].class_weights is None
    assert model.loss["category_output"].class_weights == pytest.approx(weights)
    compile_model(model, HEADS, config, {"color_output": colours, "category_output": targets})
    assert model.loss["color_output"].class_weights == pytest.approx([10 / 3, 10 / 27, 10 / 3])
    off = dataclasses.replace(config, balance_classes=False)
    compile_model(model, HEADS, off, {"color_output": colours, "category_output": targets})
    assert model.loss["category_output"].class_weights is None
    args = build_parser().parse_args(["train", "--dataset", "d", "--output", "o",
                                      "--no-balance-classes"])
    assert _config_from_args(args).balance_classes is False


def test_cosine_schedule_warms_up_then_decays_to_zero():
    from fashionnet.training import learning_rate

    schedule = learning_rate(TrainConfig(epochs=10, learning_rate=1e-3), steps_per_epoch=20)
    rates = [float(schedule(step)) for step in (0, 10, 20, 100, 199)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert rates[3] < rates[2] and rates[4] < 1e-5


def test_training_batches_carry_recoloured_images_and_moved_labels():
    """Through `batches` (tf.data on TensorFlow): pixels and colour labels change together,
    the other head's labels stay."""
    from fashionnet.data.pipeline import batches
    from fashionnet.data.recolor import Recoloring

    images = np.stack([_garment(color=(200, 30, 30))] * 8)
    color = np.zeros((8, 3), np.float32)
    color[:, 2] = 1.0
    category = np.zeros((8, 4), np.float32)
    category[:, 1] = 1.0
    plan = RecolorPlan.for_classes(["black", "blue", "red"])
    data = batches(images, {"color_output": color, "category_output": category}, 8,
                   recolor=Recoloring("color_output", plan, 1.0))
    x, y = next(iter(data))
    x, moved = np.asarray(x), np.asarray(y["color_output"])
    assert (moved.argmax(axis=1) != 2).all()
    np.testing.assert_array_equal(np.asarray(y["category_output"]), category)
    for image, label in zip(x, moved):
        garment = image[8:24, 10:22].reshape(-1, 3).mean(axis=0) * 255
        if label.argmax() == 1:
            assert abs(_hue(garment) - 218) < 25
        else:
            assert garment.max() < 0.45 * 255
