"""Registered, serializable layers, losses and metrics: a saved model loads in safe mode.

Targets for a head whose label is unknown are a row of -1 (see `fashionnet.heads`); the loss
and the metric here skip such rows, so a record missing one label still trains the others.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from fashionnet.data.recolor import GARMENT_FRACTION

PACKAGE = "fashionnet"
EPSILON = 1e-7


def per_image_uniform(images, low: float, high: float, seed_generator):
    """One uniform draw per image, shaped (n, 1, 1, 1) to broadcast over its pixels."""
    return keras.random.uniform((ops.shape(images)[0], 1, 1, 1), low, high, seed=seed_generator)


def backdrop(images):
    """Each image's backdrop colour, shaped (n, 1, 1, channels): the median of its outermost
    pixels (product photos sit on a plain backdrop)."""
    border = ops.concatenate([images[:, 0, :, :], images[:, -1, :, :],
                              images[:, :, 0, :], images[:, :, -1, :]], axis=1)
    return ops.median(border, axis=1)[:, None, None, :]


@keras.saving.register_keras_serializable(PACKAGE)
class Grayscale(keras.layers.Layer):
    """RGB -> luminance (ITU-R 601), so the category branch cannot use colour."""

    def call(self, inputs):
        weights = ops.convert_to_tensor([0.2989, 0.5870, 0.1140], dtype=inputs.dtype)
        return ops.expand_dims(ops.tensordot(inputs, weights, axes=[[-1], [0]]), -1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


def _known_rows(y_true):
    return ops.cast(y_true[:, 0] >= 0, "float32")


@keras.saving.register_keras_serializable(PACKAGE)
class HeadLoss(keras.losses.Loss):
    """Cross-entropy for one head, masked for unknown labels.

    ``multi`` picks binary cross-entropy over sigmoid outputs, else categorical cross-entropy.
    Optional class weights (one per class, applied by the true class / positive labels),
    label smoothing and focal modulation. The mean runs over the labelled rows only.
    """

    def __init__(self, multi: bool = False, class_weights: list[float] | None = None,
                 label_smoothing: float = 0.0, focal_gamma: float = 0.0,
                 name: str = "head_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.multi = multi
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0 - EPSILON)
        mask = _known_rows(y_true)
        y = ops.maximum(y_true, 0.0)
        classes = ops.shape(y)[-1]
        smoothed = y
        if self.label_smoothing:
            spread = 0.5 if self.multi else 1.0 / ops.cast(classes, "float32")
            smoothed = y * (1.0 - self.label_smoothing) + self.label_smoothing * spread
        weights = (ops.convert_to_tensor(self.class_weights, "float32")
                   if self.class_weights is not None else None)
        if self.multi:
            loss = -(smoothed * ops.log(y_pred) + (1.0 - smoothed) * ops.log(1.0 - y_pred))
            if self.focal_gamma:
                p_true = y * y_pred + (1.0 - y) * (1.0 - y_pred)
                loss = loss * ops.power(1.0 - p_true, self.focal_gamma)
            if weights is not None:
                loss = loss * (y * weights + (1.0 - y))
            per_row = ops.mean(loss, axis=-1)
        else:
            loss = -smoothed * ops.log(y_pred)
            if self.focal_gamma:
                loss = loss * ops.power(1.0 - y_pred, self.focal_gamma)
            per_row = ops.sum(loss, axis=-1)
            if weights is not None:
                per_row = per_row * ops.sum(y * weights, axis=-1)
        per_row = per_row * mask
        # The default reduction divides by the batch size; rescale so it divides by the
        # number of labelled rows instead.
        batch = ops.cast(ops.shape(y)[0], "float32")
        return per_row * batch / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self):
        return {**super().get_config(), "multi": self.multi, "class_weights": self.class_weights,
                "label_smoothing": self.label_smoothing, "focal_gamma": self.focal_gamma}


@keras.saving.register_keras_serializable(PACKAGE)
class HeadAccuracy(keras.metrics.Metric):
    """Accuracy over labelled rows; a multi-label row counts only if its whole set is right."""

    def __init__(self, multi: bool = False, threshold: float = 0.5, name: str = "accuracy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.multi = multi
        self.threshold = threshold
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        mask = _known_rows(y_true)
        if self.multi:
            predicted = ops.cast(y_pred >= self.threshold, "float32")
            right = ops.all(ops.equal(predicted, ops.cast(y_true > 0.5, "float32")), axis=-1)
        else:
            right = ops.equal(ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1))
        self.correct.assign_add(ops.sum(ops.cast(right, "float32") * mask))
        self.total.assign_add(ops.sum(mask))

    def result(self):
        return self.correct / ops.maximum(self.total, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "multi": self.multi, "threshold": self.threshold}


@keras.saving.register_keras_serializable(PACKAGE)
class RandomPhotometric(keras.layers.Layer):
    """Training only: random gamma, contrast and brightness of a [0, 1] image.

    Put on the category branch's grayscale input, it makes how dark a garment looks useless as
    a category cue (in the fashion set every pair of jeans is dark and every dress light, so a
    network that reads darkness names a blue shirt "jeans"). Identity at inference.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.3, gamma: float = 0.6,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.brightness, self.contrast, self.gamma, self.seed = brightness, contrast, gamma, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        spread = float(math.log1p(self.gamma))
        gamma = ops.exp(per_image_uniform(inputs, -spread, spread, self.seed_generator))
        x = ops.power(ops.clip(inputs, EPSILON, 1.0), gamma)
        contrast = per_image_uniform(inputs, 1.0 - self.contrast, 1.0 + self.contrast,
                                     self.seed_generator)
        brightness = per_image_uniform(inputs, -self.brightness, self.brightness,
                                       self.seed_generator)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        return ops.clip((x - mean) * contrast + mean + brightness, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "brightness": self.brightness,
                "contrast": self.contrast, "gamma": self.gamma, "seed": self.seed}


#: A pixel this far (gray level, 0-1) from the backdrop's is fully garment.
GARMENT_DISTANCE = (0.05, 0.15)
#: Images whose garment covers less or more of the frame have no clear backdrop: the same bounds
#: as recolouring's, so both leave the same close-ups and blank frames alone.
GARMENT_AREA = GARMENT_FRACTION


def garment_distance_and_mask(images):
    """Each pixel's distance from its image's backdrop gray, and the soft garment mask made
    from it (0 on the backdrop, 1 from `GARMENT_DISTANCE`'s upper end on)."""
    lo, hi = GARMENT_DISTANCE
    distance = ops.abs(images - backdrop(images))
    return distance, ops.clip((distance - lo) / (hi - lo), 0.0, 1.0)


def masked_mean(values, mask):
    """Per-image mean of ``values`` weighted by ``mask``, shaped (n, 1, 1, 1)."""
    return (ops.sum(mask * values, axis=(1, 2, 3), keepdims=True)
            / ops.maximum(ops.sum(mask, axis=(1, 2, 3), keepdims=True), EPSILON))


def where_chosen_and_clear(inputs, changed, mask, rate: float, seed_generator):
    """``changed`` for a random share ``rate`` of the images that have a clear backdrop (their
    garment within `GARMENT_AREA` of the frame), ``inputs`` for the rest."""
    area = ops.mean(mask, axis=(1, 2, 3), keepdims=True)
    chosen = per_image_uniform(inputs, 0.0, 1.0, seed_generator) < rate
    clear = ops.logical_and(area >= GARMENT_AREA[0], area <= GARMENT_AREA[1])
    return ops.where(ops.logical_and(chosen, clear), changed, inputs)


@keras.saving.register_keras_serializable(PACKAGE)
class RandomGarmentTone(keras.layers.Layer):
    """Training only: the garment's pixels of a [0, 1] grayscale image at a random brightness.

    `RandomPhotometric` moves the backdrop with the garment, so how light a garment is against
    its backdrop stays a category cue: in the fashion set every pair of jeans is dark and most
    dresses light, and held-out light-wash blue jeans were called "dress". This moves the garment
    alone: pixels far from the backdrop's gray (the median of the border) are repainted so that
    their mean lands on a random level in [``low``, ``high``], keeping their shading, as
    recolouring does (`fashionnet.data.recolor.paint`). Images without a clear backdrop (garment
    under 3 % or over 95 % of the frame) are left alone. Identity at inference.
    """

    def __init__(self, rate: float = 0.5, low: float = 0.1, high: float = 0.95,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.low, self.high, self.seed = rate, low, high, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate <= 0:
            return inputs
        _, mask = garment_distance_and_mask(inputs)
        garment = masked_mean(inputs, mask)
        # Shading relative to the garment's mean, softened by a random exponent (as `paint`).
        softness = per_image_uniform(inputs, 0.5, 1.0, self.seed_generator)
        shade = ops.power(ops.clip(inputs / ops.maximum(garment, 0.03), EPSILON, 3.0), softness)
        level = per_image_uniform(inputs, self.low, self.high, self.seed_generator)
        toned = mask * ops.clip(level * shade, 0.0, 1.0) + (1.0 - mask) * inputs
        return where_chosen_and_clear(inputs, toned, mask, self.rate, self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "low": self.low, "high": self.high,
                "seed": self.seed}


@keras.saving.register_keras_serializable(PACKAGE)
class RandomBackdrop(keras.layers.Layer):
    """Training only: a [0, 1] grayscale image's plain backdrop replaced by a random one.

    Every shoe in the fashion set is a product shot on white, while its dresses and jeans are
    often worn in a room or a street; photographed elsewhere, shoes on a wooden floor, a carpet
    or a grey wall were called dress or jeans. This keeps the garment (pixels far from the
    border's gray, `garment_distance_and_mask`) and paints everything else as a random
    mix of a flat level, a gradient, soft blotches, stripes (floorboards, fabric) and grain,
    so that what surrounds a garment stops naming it. Images without a clear backdrop (garment
    under 3 % or over 95 % of the frame) are left alone. Identity at inference.
    """

    def __init__(self, rate: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _texture(self, inputs):
        """(n, h, w, 1) random backdrops in [0, 1]."""
        n, h, w = ops.shape(inputs)[0], inputs.shape[1], inputs.shape[2]

        def uniform(low: float, high: float):
            return per_image_uniform(inputs, low, high, self.seed_generator)

        y = ops.reshape(ops.linspace(-0.5, 0.5, h), (1, h, 1, 1))
        x = ops.reshape(ops.linspace(-0.5, 0.5, w), (1, 1, w, 1))
        angle, phase = uniform(0.0, math.pi), uniform(0.0, 2 * math.pi)
        along = ops.cos(angle) * x + ops.sin(angle) * y  # a random direction
        gradient = uniform(-0.5, 0.5) * along
        angle2 = uniform(0.0, math.pi)
        across = ops.cos(angle2) * x + ops.sin(angle2) * y
        stripes = uniform(0.0, 0.15) * ops.sin(2 * math.pi * uniform(2.0, 12.0) * across + phase)
        coarse = keras.random.normal((n, 4, 4, 1), seed=self.seed_generator)
        blotches = uniform(0.0, 0.2) * ops.image.resize(coarse, (h, w), interpolation="bilinear")
        grain = uniform(0.0, 0.06) * keras.random.normal((n, h, w, 1), seed=self.seed_generator)
        return ops.clip(uniform(0.0, 1.0) + gradient + stripes + blotches + grain, 0.0, 1.0)

    def call(self, inputs, training=None):
        if not training or self.rate <= 0:
            return inputs
        distance, mask = garment_distance_and_mask(inputs)
        # How much of each pixel is garment: 1 inside it (the mask, eroded by a pixel); on its
        # edge, the pixel's distance from the backdrop over the garment's mean distance, so an
        # edge pixel half garment, half backdrop swaps only its backdrop half (no light halo
        # round a dark garment); shadows on the old backdrop stay as shadows.
        inside = -ops.max_pool(-mask, 3, strides=1, padding="same")
        contrast = ops.maximum(masked_mean(distance, mask), GARMENT_DISTANCE[1])
        alpha = ops.maximum(inside, ops.clip(distance / contrast, 0.0, 1.0))
        replaced = ops.clip(inputs + (1.0 - alpha) * (self._texture(inputs) - backdrop(inputs)),
                            0.0, 1.0)
        return where_chosen_and_clear(inputs, replaced, mask, self.rate, self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(PACKAGE)
class RandomShapeJitter(keras.layers.Layer):
    """Training only: mirror, shift and zoom an image (Keras's own random layers, in that order).

    On the category branch's input: without it that branch learns its training garments by
    heart (100 % of them right), and the style of the few garments of each combination is what
    fails on a combination it never saw (lever 13 in docs/accuracy.md). The colour head does not
    get it: it pools over pixels, so moving them tells it nothing.

    Identity at inference, with no random op in the inference graph: Keras's random image
    layers draw their random numbers even when not training, and ONNX has no such op, so a
    model holding them bare cannot be exported.
    """

    def __init__(self, shift: float = 0.08, zoom: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.shift, self.zoom = shift, zoom
        self.flip_layer = keras.layers.RandomFlip("horizontal")
        self.shift_layer = keras.layers.RandomTranslation(shift, shift, fill_mode="nearest")
        self.zoom_layer = keras.layers.RandomZoom(zoom, fill_mode="nearest")

    def build(self, input_shape):
        # The random layers hold no weights; building them here keeps Keras from warning, on
        # every load of a saved model, that this layer has "unbuilt state".
        for layer in (self.flip_layer, self.shift_layer, self.zoom_layer):
            layer.build(input_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        x = self.flip_layer(inputs, training=True)
        x = self.shift_layer(x, training=True)
        return self.zoom_layer(x, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "shift": self.shift, "zoom": self.zoom}


@keras.saving.register_keras_serializable(PACKAGE)
class RandomCutout(keras.layers.Layer):
    """Training only: with probability ``rate``, one random rectangle of each image (each side
    ``min_side``..``max_side`` of the image's) is painted one random flat gray.

    On the category branch's input ("random erasing"): a garment whose neckline or pocket is
    hidden must still be named, so the branch cannot rest on the one detail that happened to
    tell its few training garments apart. Identity at inference; no random op in the inference
    graph (see `RandomShapeJitter`).
    """

    def __init__(self, rate: float = 0.5, min_side: float = 0.2, max_side: float = 0.45,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.min_side, self.max_side, self.seed = rate, min_side, max_side, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate <= 0:
            return inputs
        height, width = ops.shape(inputs)[1], ops.shape(inputs)[2]

        def uniform(low, high):
            return per_image_uniform(inputs, low, high, self.seed_generator)

        box_h, box_w = uniform(self.min_side, self.max_side), uniform(self.min_side, self.max_side)
        top, left = uniform(0.0, 1.0) * (1.0 - box_h), uniform(0.0, 1.0) * (1.0 - box_w)
        rows = (ops.cast(ops.arange(height), inputs.dtype) + 0.5) / ops.cast(height, inputs.dtype)
        cols = (ops.cast(ops.arange(width), inputs.dtype) + 0.5) / ops.cast(width, inputs.dtype)
        rows, cols = ops.reshape(rows, (1, -1, 1, 1)), ops.reshape(cols, (1, 1, -1, 1))
        inside = ((rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
                  & (uniform(0.0, 1.0) < self.rate))
        return ops.where(inside, uniform(0.0, 1.0), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "min_side": self.min_side,
                "max_side": self.max_side, "seed": self.seed}


@keras.saving.register_keras_serializable(PACKAGE)
class MirrorViews(keras.layers.Layer):
    """Inference only: the batch followed by its mirror images (twice the rows); `MirrorAverage`
    folds the two back. Identity in training, so training costs nothing more.

    On the category branch of a network trained on mirrored images (`RandomShapeJitter`),
    averaging the prediction over an image and its mirror image removes the left/right accidents
    of a photo: over the fashion set's six held-out combinations, with the same trained weights,
    it lifted mean unseen exact match 89.4 -> 89.9 % and seen 93.85 -> 94.1 % (lever 15 in
    docs/accuracy.md). Only the grayscale branch's heads get it; the colour head pools over
    pixels, so a mirror image gives it the same answer.
    """

    def call(self, inputs, training=None):
        if training:
            return inputs
        return ops.concatenate([inputs, ops.flip(inputs, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(PACKAGE)
class MirrorAverage(keras.layers.Layer):
    """Inference only: the mean of the two halves of a batch made by `MirrorViews`."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        width = ops.shape(inputs)[-1]
        return ops.mean(ops.reshape(inputs, (2, -1, width)), axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(PACKAGE)
class ImageStandardization(keras.layers.Layer):
    """Per image: zero mean, unit variance, so overall brightness and contrast carry no signal."""

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        var = ops.mean(ops.square(inputs - mean), axis=(1, 2, 3), keepdims=True)
        return (inputs - mean) / ops.sqrt(var + 1e-4)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(PACKAGE)
class LocalContrastNormalization(keras.layers.Layer):
    """Per pixel: minus its neighbourhood's mean, over its neighbourhood's spread.

    `ImageStandardization` removes the whole image's brightness and contrast, but not how faint
    the garment's outline is against its backdrop: every garment of the fashion set is dark or
    saturated on a white backdrop, and a white shoe on white, photographed elsewhere, was a
    shoe to the category branch only 39 % of the time. Dividing by the local spread lifts a
    faint edge toward a sharp one's strength. The spread is floored at its mean over the image
    (Jarrett et al., 2009), so flat backdrop, where the spread is only JPEG noise, stays flat.
    ``window``: the neighbourhood's side in pixels (odd). Off by default (`local_contrast`):
    it lifted white garments from another source but cost brown and green shoes (lever 23).
    """

    def __init__(self, window: int = 9, **kwargs):
        super().__init__(**kwargs)
        self.window = int(window)

    def call(self, inputs):
        mean = ops.average_pool(inputs, self.window, 1, padding="same")
        centred = inputs - mean
        spread = ops.sqrt(ops.average_pool(ops.square(centred), self.window, 1, padding="same")
                          + 1e-6)
        floor = ops.maximum(ops.mean(spread, axis=(1, 2, 3), keepdims=True), 1e-3)
        return centred / ops.maximum(spread, floor)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "window": self.window}


def local_contrast_window(input_size: int) -> int:
    """The neighbourhood of `LocalContrastNormalization`: about a seventh of the side, odd."""
    return max(3, (input_size // 7) | 1)


@keras.saving.register_keras_serializable(PACKAGE)
class BackgroundDistance(keras.layers.Layer):
    """Per pixel: the distance of its RGB colour from the image's background colour.

    The background is `backdrop`: the median colour of the image's outermost pixels. The
    output, one channel, tells a per-pixel head which pixels are garment without giving it any
    shape: it depends on the pixel and the border only.
    """

    def call(self, inputs):
        diff = inputs - backdrop(inputs)
        return ops.sqrt(ops.sum(ops.square(diff), axis=-1, keepdims=True) + EPSILON)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable(PACKAGE)
class GarmentLocation(keras.layers.Layer):
    """Inputs ``[feature_map, pixels]``: the category branch's feature map, read only, resized
    (bilinear) to the colour head's grid of pixels.

    For the colour head's pooling weights (`pixel_color_head` with a garment map): the category
    branch knows where the labelled garment is in a photo that shows several (shorts under a
    white top), and the colour head, which sees one 2x2 block at a time, does not. The gradient
    is stopped, so the colour loss never trains the category branch (darkness would become a
    category cue again), and the rows are cut to the colour head's batch (`MirrorViews` doubles
    the category branch's rows at inference; the first half are the images themselves).
    Resized here rather than with ``keras.layers.Resizing``: that layer's ``training=True``
    default leaks into the model's call context, and the layers after it ran in training mode
    when called without ``training`` (as the ONNX export does).
    """

    def call(self, inputs):
        feature_map, pixels = inputs
        feature_map = ops.stop_gradient(feature_map[:ops.shape(pixels)[0]])
        return ops.image.resize(feature_map, self._grid(pixels.shape), interpolation="bilinear")

    @staticmethod
    def _grid(pixels_shape) -> tuple[int, int]:
        return int(pixels_shape[1]), int(pixels_shape[2])

    def compute_output_shape(self, input_shape):
        map_shape, pixels_shape = input_shape
        return (map_shape[0], *self._grid(pixels_shape), map_shape[-1])


@keras.saving.register_keras_serializable(PACKAGE)
class CategoryMap(keras.layers.Layer):
    """Inputs ``[maps (B, H, W, K), category probabilities (B, K)]``: one garment map per
    category, mixed by the category head's prediction into one (B, H, W, 1) map.

    In an outfit photo (shorts under a white top) "where is the garment" has several answers;
    the label is about the garment the category head names, so the colour head pools over that
    one. The probabilities are read only: the colour loss must never train the category head
    (it would learn colour as a category cue again).
    """

    def call(self, inputs):
        maps, probabilities = inputs
        weights = ops.stop_gradient(probabilities)[:, None, None, :]
        return ops.sum(maps * ops.cast(weights, maps.dtype), axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], 1)


@keras.saving.register_keras_serializable(PACKAGE)
class GarmentWeightedPooling(keras.layers.Layer):
    """Pool per-pixel features into one vector, weighted toward the garment.

    Inputs: ``[features (B, H, W, C), attention (B, H, W, 1), background_distance (B, H, W, 1)]``.
    Each pixel's weight is a softmax over the image of its learned attention plus a fixed prior,
    ``log(clip(distance / scale, floor, 1))``: pixels the colour of the backdrop count ``floor``
    times as much as garment pixels, so a white background cannot outvote a black garment, yet
    a white garment on white still gets a vote. A sum over pixels: where a pixel is does not
    matter, only what colour it is.
    """

    def __init__(self, scale: float = 0.15, floor: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.floor = scale, floor

    def call(self, inputs):
        logits, attention, distance = inputs
        prior = ops.log(ops.clip(distance / self.scale, self.floor, 1.0))
        scores = attention + prior
        batch = ops.shape(logits)[0]
        scores = ops.reshape(scores, (batch, -1, 1))
        weights = ops.softmax(scores, axis=1)
        flat = ops.reshape(logits, (batch, -1, ops.shape(logits)[-1]))
        return ops.sum(weights * flat, axis=1)

    def compute_output_shape(self, input_shape):
        logits_shape = input_shape[0]
        return (logits_shape[0], logits_shape[-1])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "floor": self.floor}
