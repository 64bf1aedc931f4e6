"""Training on a frozen pretrained backbone (``TrainConfig.backbone``, not ``scratch``).

`fashionnet.training.train` calls in here at four points; the rest of a run (split, losses,
callbacks, calibration, metrics, bundle) is the scratch path's.

* Loading (`attach`): the images are decoded at `BACKBONE_SIZE` (224 px): the shipped model's
  input, what validation and test are scored on. The near-duplicate groups, and so the split,
  come from the decode at the run's input size, as in a scratch run. Each image's pooled
  Lite0 features of the grayscale image (plain and mirrored) come from the feature cache
  (`fashionnet.model.feature_cache`), so a second run, or fold, runs no backbone at all.
  The colour heads' training images are the 224 px images resampled to the input size as the
  shipped model does it (`resample_images`). With ``category_attention`` each image's 7x7
  feature map before pooling (plain view) comes from its own cache as well (float16), for the
  colour heads' class activation maps.
* Training: the colour heads on those images (recolouring, as in a scratch run), every other
  head on the features, of a random view (plain or mirror) per image and step. Recolouring
  repaints the colour head's image only: the features stay the original image's. The category
  head is colour-blind (grayscale) by design, but a repainted garment has another gray level
  the features do not see; the brightness jitter of the scratch category branch
  (`RandomPhotometric`, `RandomBackdrop`, shape jitter) has no counterpart either: the features
  are fixed per view.
* Validation each epoch (best epoch, early stopping): the training model on the validation
  images' plain features (identical, up to float rounding, to the shipped model's answers).
* After training (`FrozenBackbone.shipped_model`): the single-input 224 px model with Lite0
  inside; validation (calibration), test and ``split.json`` figures are that model's answers
  on the 224 px decoded images. Training-split figures come from the training model on the
  plain features (the same answers, without a second backbone pass over every image).

Settings of the scratch category branch (`fashionnet.config.SCRATCH_ONLY`: shape jitter,
mirror average, backdrop, cutout, garment map, category dropout, local contrast, precise
BatchNorm) have no effect here: `TrainConfig` refuses any value but the architecture's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import keras
import numpy as np

from fashionnet.config import TrainConfig
from fashionnet.data.images import decode_many, to_model_input
from fashionnet.data.pipeline import BatchSequence
from fashionnet.data.recolor import Recoloring
from fashionnet.data.splits import Split, duplicate_groups
from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec
from fashionnet.model.backbone_net import (
    BACKBONE_SIZE,
    attention_head,
    build_inference_model,
    build_training_model,
    resample_images,
    training_inputs,
)
from fashionnet.training import BestEpoch, Dataset, evaluate_split

log = logging.getLogger("fashionnet")

VIEWS = ("plain", "mirror")
#: Cells of Lite0's last feature map at `BACKBONE_SIZE` (224 / 32 = 7 a side).
MAP_SIDE = BACKBONE_SIZE // 32
MAP_CELLS = MAP_SIDE * MAP_SIDE


@dataclasses.dataclass
class BackboneData:
    """What a backbone run adds to a `Dataset` (whose ``images`` are then 224 px)."""

    name: str
    color_images: np.ndarray  # uint8 (n, input_size, input_size, 3), resampled from 224 px
    features: dict[str, np.ndarray]  # view -> float32 (n, dims)
    computed: int  # images run through the backbone while loading (the rest: cache)
    seconds: float
    #: float16 (n, 7, 7, dims): the plain view's feature map before pooling, for
    #: ``category_attention`` (None without it)
    maps: np.ndarray | None = None

    def input_names(self, heads: Sequence[HeadSpec]) -> tuple[str, ...]:
        """The training model's inputs for ``heads`` (`training_inputs`)."""
        return training_inputs(heads, self.maps is not None)

    def inputs(self, names: Sequence[str], view: str = "plain") -> dict[str, np.ndarray]:
        """The arrays behind the training model's inputs ``names``, every image's (not
        copied: `predict_inputs` takes the rows it needs batch by batch)."""
        arrays = {"image": self.color_images, "features": self.features[view],
                  "feature_map": self.maps}
        return {name: arrays[name] for name in names}


class _LazyLite0:
    """Lite0 with its ImageNet weights, built on the first cache miss only."""

    def __init__(self, batch_size: int = 32, feature_map: bool = False):
        self.model = None
        self.batch_size = batch_size
        self.feature_map = feature_map  # the map before pooling, not the pooled features
        self.calls = 0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from fashionnet.model.efficientnet_lite import feature_map_model, pretrained_lite0

        if self.model is None:
            self.model = pretrained_lite0(BACKBONE_SIZE)
            if self.feature_map:
                self.model = feature_map_model(self.model)
        self.calls += 1
        return self.model.predict(pixels, batch_size=self.batch_size, verbose=0)


def require_weights() -> None:
    """The backbone's weights are installed, or a one-line error that says how to get them
    and that ``--backbone scratch`` trains without them; never a silent fallback."""
    from fashionnet.model.efficientnet_lite import weights_file

    try:
        weights_file()
    except FashionNetError as exc:
        raise FashionNetError(f"{exc}; or train the scratch network without them: "
                              f"--backbone scratch") from None


def lite0_features_backbone():
    from fashionnet.model.efficientnet_lite import FEATURES, NAME, WEIGHTS_SHA256
    from fashionnet.model.feature_cache import Backbone

    return Backbone(NAME, WEIGHTS_SHA256, BACKBONE_SIZE, FEATURES, _LazyLite0())


def lite0_map_backbone():
    """Lite0's 7x7 feature map before pooling, flattened, kept as float16 (125 kB an image)."""
    from fashionnet.model.efficientnet_lite import FEATURES, NAME, WEIGHTS_SHA256
    from fashionnet.model.feature_cache import Backbone

    return Backbone(f"{NAME}-map", WEIGHTS_SHA256, BACKBONE_SIZE, MAP_CELLS * FEATURES,
                    _LazyLite0(feature_map=True), dtype="float16")


def check_config(config: TrainConfig) -> None:
    """`TrainConfig.check_backbone` again: a config changed after it was built."""
    config.check_backbone()


def attach(data: Dataset, config: TrainConfig, progress: bool = True) -> Dataset:
    """Turn a scratch `Dataset` (images at the input size) into a backbone one, in place."""
    from fashionnet.model.feature_cache import extract_features

    check_config(config)
    require_weights()
    backbone = lite0_features_backbone()
    if config.dedupe and data.groups is None:
        data.groups = duplicate_groups(data.images)  # the scratch run's split, exactly
    paths = [r.path for r in data.records]
    decoded = decode_many(paths, BACKBONE_SIZE, strict=config.strict, progress=progress,
                          cache=config.cache)
    found = extract_features(paths, backbone, VIEWS, cache=config.cache, progress=progress)
    keep = np.intersect1d(decoded.kept, found.kept)
    mapped = None
    if config.category_attention and attention_head(data.heads) is not None:
        mapped = extract_features(paths, lite0_map_backbone(), ("plain",), cache=config.cache,
                                  progress=progress)
        keep = np.intersect1d(keep, mapped.kept)
    if len(keep) == 0:
        raise FashionNetError(f"{config.dataset}: no image readable at {BACKBONE_SIZE} px")
    images = decoded.images[np.searchsorted(decoded.kept, keep)]
    features = {v: found.views[v][np.searchsorted(found.kept, keep)] for v in VIEWS}
    if len(keep) < len(paths):
        lost = sorted(set(range(len(paths))) - set(keep.tolist()))
        data.skipped = [*data.skipped, *(str(paths[i]) for i in lost)]
        data.records = [data.records[i] for i in keep]
        if data.groups is not None:
            data.groups = data.groups[keep]
    log.info("%s features: %d images run through the backbone (%.0f s), %d from the cache",
             backbone.name, found.computed, found.seconds, len(keep) - found.computed)
    if mapped is not None:
        log.info("%s feature maps: %d images run through the backbone (%.0f s), %d from the "
                 "cache", backbone.name, mapped.computed, mapped.seconds,
                 len(keep) - mapped.computed)
    data.images = images
    maps = None
    if mapped is not None:
        maps = mapped.views["plain"][np.searchsorted(mapped.kept, keep)].reshape(
            len(keep), MAP_SIDE, MAP_SIDE, -1)
    data.backbone = BackboneData(backbone.name, resample_images(images, config.input_size),
                                 features, found.computed, found.seconds, maps)
    return data


class FeatureBatches(BatchSequence):
    """Batches of ({image, features[, feature_map]}, {output: targets}); training batches are
    reshuffled every epoch, recoloured like a scratch run's (image and colour label only) and
    take each image's features of a random view (the feature map, which places the colour
    heads' pooling on the image as it is, stays the plain view's). ``maps`` is every image's
    feature map and ``map_rows`` the rows of this split in it: 125 kB an image, not copied."""

    def __init__(self, names: Sequence[str], images: np.ndarray,
                 features: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                 batch_size: int = 32, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, recolor: Recoloring | None = None,
                 maps: np.ndarray | None = None, map_rows: np.ndarray | None = None):
        super().__init__(images, targets, batch_size, shuffle=shuffle, augment=augment,
                         seed=seed, recolor=recolor)
        self.names, self.features = tuple(names), features
        self.maps, self.map_rows = maps, map_rows

    def __getitem__(self, index: int):
        rows = self.rows(index)
        targets = {n: y[rows] for n, y in self.targets.items()}
        inputs = {}
        if "image" in self.names:
            inputs["image"] = self.image_batch(rows, targets)
        if "features" in self.names:
            views = [self.features[v][rows] for v in VIEWS if v in self.features]
            if self.shuffle and len(views) > 1:
                pick = self.rng.integers(0, len(views), len(rows))
                inputs["features"] = np.stack(views)[pick, np.arange(len(rows))]
            else:
                inputs["features"] = views[0]
        if "feature_map" in self.names:
            inputs["feature_map"] = self.maps[self.map_rows[rows]].astype(np.float32)
        return inputs, targets


def predict_inputs(model: keras.Model, inputs: dict[str, np.ndarray], rows: np.ndarray,
                   batch_size: int = 256) -> list[np.ndarray]:
    """The training model's probabilities on ``rows`` of ``inputs`` (`BackboneData.inputs`),
    one array per output."""
    chunks: list[list] = [[] for _ in model.outputs]
    for start in range(0, len(rows), batch_size):
        take = rows[start:start + batch_size]
        batch = {name: (to_model_input(value[take]) if name == "image"
                        else value[take].astype(np.float32))
                 for name, value in inputs.items()}
        outputs = model(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for chunk, out in zip(chunks, outputs):
            chunk.append(keras.ops.convert_to_numpy(out))
    return [np.concatenate(c) if c else np.zeros((0, o.shape[-1]), np.float32)
            for c, o in zip(chunks, model.outputs)]


class FeatureBestEpoch(BestEpoch):
    """`BestEpoch` scoring the training model on the validation images' plain features."""

    def __init__(self, frozen: FrozenBackbone, heads, targets, patience: int, restore: bool,
                 **kwargs):
        super().__init__(heads, frozen.rows_of("val"), targets, patience, restore, **kwargs)
        self.frozen = frozen

    def score(self) -> dict:
        return self.frozen.evaluate(self.model, self.heads, "val", self.targets)


class FrozenBackbone:
    """The backbone path of one `train` call: models, batches and scoring on ``split``."""

    def __init__(self, config: TrainConfig, data: Dataset, split: Split):
        if data.backbone is None:
            raise FashionNetError("the dataset was loaded without the backbone's features")
        self.config, self.data = config, data.backbone
        self.rows = {name: np.asarray(getattr(split, name), dtype=np.int64)
                     for name in ("train", "val", "test")}
        self.names: tuple[str, ...] = ()

    @property
    def input_size(self) -> int:
        return BACKBONE_SIZE

    def rows_of(self, name: str) -> np.ndarray:
        return self.data.color_images[self.rows[name]]

    def training_model(self, heads: Sequence[HeadSpec]) -> keras.Model:
        self.names = self.data.input_names(heads)
        dims = next(iter(self.data.features.values())).shape[1]
        maps = self.data.maps
        return build_training_model(heads, self.config.input_size, dims,
                                    map_shape=None if maps is None else maps.shape[1:])

    def batches(self, name: str, targets: dict[str, np.ndarray],
                recolor: Recoloring | None = None) -> FeatureBatches:
        rows = self.rows[name]
        training = name == "train"
        views = VIEWS if training else ("plain",)
        return FeatureBatches(self.names, self.data.color_images[rows],
                              {v: self.data.features[v][rows] for v in views}, targets,
                              self.config.batch_size, shuffle=training,
                              augment=training and self.config.augment, seed=self.config.seed,
                              recolor=recolor if training else None,
                              maps=self.data.maps, map_rows=rows)

    def predict(self, model: keras.Model, name: str) -> list[np.ndarray]:
        """The training model's outputs on one split's plain features."""
        return predict_inputs(model, self.data.inputs(self.names), self.rows[name])

    def evaluate(self, model: keras.Model, heads, name: str,
                 targets: dict[str, np.ndarray]) -> dict:
        rows = self.rows[name]
        return evaluate_split(model, heads, rows, targets, probs=self.predict(model, name))

    def shipped_model(self, heads: Sequence[HeadSpec], trained: keras.Model) -> keras.Model:
        """The bundle's model: one 224 px input, Lite0 inside, the trained heads' weights."""
        from fashionnet.model.efficientnet_lite import pretrained_lite0

        return build_inference_model(heads, self.config.input_size,
                                     pretrained_lite0(BACKBONE_SIZE), trained,
                                     attention=self.data.maps is not None)
