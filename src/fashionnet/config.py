"""The training configuration: defaults reproduce the recipe; a TOML file overrides them.

    epochs = 30
    holdout = ["red_shirt"]

    [[heads]]
    name = "color"
    branch = "color"

    [[heads]]
    name = "occasions"
    kind = "multi"
    branch = "shared"
    class_weights = "balanced"
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any

from fashionnet.errors import FashionNetError
from fashionnet.files import MAX_CONFIG_BYTES, read_small_text
from fashionnet.heads import HeadSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: Settings that follow the architecture unless given: ``recipe`` (and ``gap``) train exactly as
#: the recipe did; ``disentangled`` reads 64 px (its flattened category features stay small: a
#: 4 MB model, ~2x faster than 96 px; the quick study protocol below is then the default run
#: with fewer epochs) and trains shorter on a warm-up + cosine schedule, with counterfactual
#: recolouring, and a faster BatchNorm average (fewer steps). Flips/shifts of the whole input
#: (`augment`) are off: on the quick study they cost seen and unseen accuracy once recolouring
#: and the photometric jitter of the category branch were in (docs/accuracy.md); the
#: architecture mirrors, shifts and zooms the category branch's input itself
#: (`shape_jitter`, `model.layers.RandomShapeJitter`): on fashion it lifted the worst held-out
#: combination 80 -> 88 %, on apparel it cost held-out white shoes 3 points (docs/accuracy.md).
#: Having seen mirror images in training, the category branch then predicts from an image and
#: its mirror image, averaged (`mirror_average`, `model.layers.MirrorViews`): on fashion's six
#: folds +0.5 unseen, +0.3 seen with the same weights (+0.2 / +0.1 retrained), no training cost.
#: Its single-label heads weigh each class by how rare it is in the training split
#: (`balance_classes`): a held-out combination leaves its category with half the images of the
#: others, and an unweighted head then calls it the common one (held-out jeans called dress).
#: Local contrast normalisation of the category branch's input (`local_contrast`) is off: on
#: fashion's folds, with the random backdrop below, +0.3 unseen and +1.0 seen over two seeds,
#: but shoes photographed elsewhere lose 2-10 points of category (levers 23 and 26 in
#: docs/accuracy.md). Half of the
#: category branch's training inputs get a random backdrop behind the garment
#: (`random_backdrop`, `model.layers.RandomBackdrop`): every fashion shoe is a product shot on
#: white, and photographed elsewhere (a floor, a street) shoes were called dress or jeans; with
#: it, apparel's brown, green and white shoes are shoes 5-38 points more often (lever 25).
#: The category branch's convolution blocks have no dropout (`category_dropout` 0; the recipe
#: has 0.25 after each): with the augmentations above, the branch fitted only ~90 % of its
#: augmented training inputs, and without the dropout seen combinations are right more often
#: on fashion's folds at two seeds (lever 35).
#: The disentangled architecture's category heads read a frozen ImageNet EfficientNet-Lite0
#: (`backbone`, issue 33): on fashion's leave-one-combination-out study 95.4/95.8 % unseen
#: exact match (two seeds) against 91.5 % for the scratch branch, seen 97.5/97.9 against 94.4.
#: The recipe and gap architectures are the scratch network (`backbone` scratch), which stays
#: the fast option for disentangled too (`--backbone scratch`).
#: With the backbone the colour heads pool over the category head's class activation map
#: (`category_attention`, lever 44): apparel's 13 folds 82.9 -> 87.0 % unseen, 89.5 -> 92.4 %
#: seen (higher in all 13); fashion unchanged within a fold's noise.
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "recipe": {"input_size": 96, "epochs": 50, "lr_decay": "recipe", "augment": False,
               "shape_jitter": False, "mirror_average": False, "cutout": 0.0,
               "garment_map": False, "category_garment_map": False,
               "garment_tone": 0.0, "local_contrast": False,
               "random_backdrop": 0.0, "category_dropout": 0.25, "bn_momentum": 0.99,
               "recolor": 0.0, "recolor_outside": 0.0, "precise_bn": False,
               "balance_classes": False, "backbone": "scratch",
               "category_attention": False},
    "gap": {"input_size": 96, "epochs": 50, "lr_decay": "recipe", "augment": False,
            "shape_jitter": False, "mirror_average": False, "cutout": 0.0,
            "garment_map": False, "category_garment_map": False, "garment_tone": 0.0,
            "local_contrast": False,
            "random_backdrop": 0.0, "category_dropout": 0.25, "bn_momentum": 0.99,
            "recolor": 0.0, "recolor_outside": 0.0, "precise_bn": False,
            "balance_classes": False, "backbone": "scratch",
            "category_attention": False},
    "disentangled": {"input_size": 64, "epochs": 30, "lr_decay": "cosine", "augment": False,
                     "shape_jitter": True, "mirror_average": True, "cutout": 0.0,
                     "garment_map": False, "category_garment_map": False,
                     "garment_tone": 0.0, "local_contrast": False,
                     "random_backdrop": 0.5, "category_dropout": 0.0, "bn_momentum": 0.9,
                     "recolor": 0.5, "recolor_outside": 0.0, "precise_bn": True,
                     "balance_classes": True, "backbone": "efficientnet-lite0",
                     "category_attention": True},
}
LR_DECAYS = ("recipe", "cosine", "none")

#: Named bundles of settings. ``quick`` is the cheap study protocol of docs/accuracy.md: 64 px
#: inputs, 12 epochs on a warm-up + cosine schedule, BatchNorm statistics re-estimated after
#: training, whatever the architecture: a 6-fold study of the fashion set takes ~15 minutes on
#: two CPU cores, and it ranks variants as the 50-epoch protocol does.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"input_size": 64, "epochs": 12, "lr_decay": "cosine", "bn_momentum": 0.9,
              "precise_bn": True},
}


SPLITS = ("standard", "recipe")
#: `TrainConfig.backbone`: what the category (grayscale-branch) heads read.
BACKBONES = ("scratch", "efficientnet-lite0")
#: Settings of the scratch category branch (its input augmentations, layers and BatchNorm
#: re-estimation): a pretrained backbone reads fixed features of each image, so with one they
#: can only keep the architecture's value (`TrainConfig` refuses another, in one line).
SCRATCH_ONLY = ("shape_jitter", "mirror_average", "cutout", "category_garment_map",
                "garment_map", "garment_tone", "local_contrast", "random_backdrop",
                "category_dropout", "precise_bn")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One TrainConfig field: its type, allowed values and the sentence that explains it.

    Declared once, here; `TrainConfig` checks every value against it when a config is built
    (from Python, a TOML file or the command line), `fashionnet train --help` and the
    `init-config` template take their text and choices from it.
    """

    kind: type  # int, float, bool, str or list (of strings)
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False  # minimum itself not allowed
    open_max: bool = False
    metavar: str | None = None
    #: What `fashionnet tune` may try for this setting: ("log", low, high), ("uniform", low,
    #: high), ("int", low, high) or ("choice", value, ...); empty: not tuned.
    search: tuple = ()

    def check(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok and not math.isfinite(value):  # NaN compares false with every bound
                return f"{name} must be a finite number, not {value!r}"
        elif self.kind is list:
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str)
        if not ok:
            wanted = {bool: "true or false", int: "a whole number", float: "a number",
                      list: "a list of strings", str: "a string"}[self.kind]
            return f"{name} must be {wanted}, not {value!r}"
        if self.choices and value not in self.choices:
            return f"{name} must be one of {', '.join(self.choices)}; not {value!r}"
        low = self.minimum is not None and (value <= self.minimum if self.open_min
                                            else value < self.minimum)
        high = self.maximum is not None and (value >= self.maximum if self.open_max
                                             else value > self.maximum)
        if low or high:
            return f"{name} must be {self.range_text()}, not {value!r}"
        return None

    def range_text(self) -> str:
        """``at least 0 and below 1``, ``above 0``, ..."""
        parts = []
        if self.minimum is not None:
            parts.append(f"{'above' if self.open_min else 'at least'} {_number(self.minimum)}")
        if self.maximum is not None:
            parts.append(f"{'below' if self.open_max else 'at most'} {_number(self.maximum)}")
        return " and ".join(parts)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


#: Every setting of TrainConfig but ``heads`` (its own tables, see `HeadSpec`).
SETTINGS: dict[str, Setting] = {
    "dataset": Setting(str, "folder with one sub-folder per combination (e.g. red_dress/), or a "
                            "CSV/JSON/JSONL manifest; in a config file, relative to the file",
                      metavar="PATH"),
    "multi": Setting(list, "heads that are multi-label (manifest cells like party|work, or "
                           "JSON lists)", metavar="HEAD,..."),
    "separator": Setting(str, "what splits a folder name into one label per head",
                         metavar="SEP"),
    "multi_separator": Setting(str, "what separates the labels of a multi-label cell"),
    "path_column": Setting(str, "the manifest column holding each image's path"),
    "input_size": Setting(int, "images are resized to SIZE x SIZE pixels", minimum=32,
                          maximum=1024, metavar="SIZE"),
    "architecture": Setting(str, "disentangled: 2x2-pixel colour head, brightness-blind, "
                                 "shape-jittered category branch, trained with recolouring; "
                                 "recipe: the "
                                 "recipe's network and training, exactly; gap: the recipe "
                                 "with global average pooling",
                            choices=tuple(ARCHITECTURE_DEFAULTS)),
    "bn_momentum": Setting(float, "BatchNorm moving-average momentum", minimum=0.0,
                           maximum=1.0, open_min=True, open_max=True, metavar="M"),
    "epochs": Setting(int, "passes over the training images", minimum=1, metavar="N"),
    "batch_size": Setting(int, "images per training step", minimum=1, metavar="N",
                          search=("choice", 16, 32, 64)),
    "learning_rate": Setting(float, "Adam's (peak) learning rate", minimum=0.0, open_min=True,
                             metavar="LR", search=("log", 2e-4, 3e-3)),
    "lr_decay": Setting(str, "recipe: inverse-time per step; cosine: 1-epoch warm-up then "
                             "cosine to zero; none: constant", choices=LR_DECAYS),
    "split": Setting(str, "standard: train/validation/test; recipe: 80/20, test used as "
                          "validation, only to compare with the recipe", choices=SPLITS),
    "val_fraction": Setting(float, "share of the images for validation (best epoch, "
                                   "calibration)", minimum=0.0, maximum=1.0, open_max=True,
                            metavar="F"),
    "test_fraction": Setting(float, "share of the images for the final test", minimum=0.0,
                             maximum=1.0, open_max=True, metavar="F"),
    "seed": Setting(int, "random seed of the split, the shuffling and the weights",
                    metavar="N"),
    "dedupe": Setting(bool, "keep near-duplicate images (re-encoded, resized) in one split"),
    "holdout": Setting(list, "combinations kept out of training (test only), e.g. "
                             "red_shirt,blue_jeans", metavar="COMBO,..."),
    "augment": Setting(bool, "flips, shifts, brightness/contrast (never hue)"),
    "shape_jitter": Setting(bool, "mirror, shift and zoom the category branch's input in "
                                  "training (inside the model; the colour head never sees it)"),
    "cutout": Setting(float, "share of training images whose category-branch input gets one "
                             "random rectangle painted flat gray (random erasing)", minimum=0.0,
                      maximum=1.0, metavar="P"),
    "garment_tone": Setting(float, "share of training images whose category-branch input gets "
                                   "its garment repainted at a random brightness", minimum=0.0,
                            maximum=1.0, metavar="P"),
    "random_backdrop": Setting(float, "share of training images whose category-branch input "
                                      "gets its plain backdrop replaced by a random texture "
                                      "(gradient, blotches, stripes, grain)", minimum=0.0,
                               maximum=1.0, metavar="P", search=("uniform", 0.0, 0.8)),
    "category_dropout": Setting(float, "dropout after each of the category branch's three "
                                       "convolution blocks (the recipe's 0.25)", minimum=0.0,
                                maximum=1.0, open_max=True, metavar="P",
                                search=("uniform", 0.0, 0.4)),
    "local_contrast": Setting(bool, "divide the category branch's grayscale input by its local "
                                    "contrast, so a faint outline (white on white) counts as "
                                    "much as a sharp one"),
    "mirror_average": Setting(bool, "at inference, average the category branch's prediction "
                                    "over the image and its mirror image (inside the model)"),
    "garment_map": Setting(bool, "colour heads weight their pooling by the category branch's "
                                 "feature map (where the garment is; read only)"),
    "category_garment_map": Setting(bool, "the garment map holds one map per category, mixed by "
                                          "the category head's prediction: colour is read off "
                                          "the garment the label is about (outfit photos); "
                                          "implies garment_map"),
    "category_attention": Setting(bool, "with a pretrained backbone, colour heads pool over "
                                        "where the category head sees the category it names "
                                        "(its class activation map on the backbone's 7x7 "
                                        "feature map; read only): colour is read off the "
                                        "labelled garment of an outfit photo"),
    "recolor": Setting(float, "share of training images repainted in another colour, label "
                              "moved with it", minimum=0.0, maximum=1.0, metavar="P",
                      search=("uniform", 0.2, 0.8)),
    "recolor_outside": Setting(float, "share of training images repainted in a colour outside "
                                      "the colour head's label set, colour label masked: the "
                                      "other heads see garments in colours the data lacks",
                               minimum=0.0, maximum=1.0, metavar="P"),
    "balance_classes": Setting(bool, "weight each class of a single-label head by how rare it is "
                                     "in the training split, n / (classes x count); not the "
                                     "colour head recolouring relabels; a head's own "
                                     "class_weights win"),
    "label_smoothing": Setting(float, "label smoothing of the single-label losses", minimum=0.0,
                               maximum=1.0, open_max=True, metavar="E",
                               search=("uniform", 0.0, 0.15)),
    "patience": Setting(int, "stop after N epochs without validation gain (0: never)",
                        minimum=0, metavar="N"),
    "strict": Setting(bool, "fail on the first unreadable image instead of skipping it"),
    "allow_outside": Setting(bool, "let manifest paths leave the manifest's folder (../, "
                                   "absolute paths)"),
    "cache": Setting(bool, "cache decoded images (~/.cache/fashionnet)"),
    "calibrate": Setting(bool, "fit per-head temperature scaling on the validation split"),
    "precise_bn": Setting(bool, "re-estimate BatchNorm statistics on training images after "
                                "training (and after each early epoch)"),
    "backbone": Setting(str, "the category heads' features: efficientnet-lite0: a frozen "
                             "ImageNet EfficientNet-Lite0 on the grayscale image at 224 px "
                             "(features cached per image; the bundle takes 224 px input; "
                             "input_size is then the colour head's); scratch: the grayscale "
                             "branch trained from scratch at input_size, the fast option and "
                             "the only one with the scratch branch's settings (shape_jitter, "
                             "cutout, garment_map, ...)",
                        choices=BACKBONES),
}


def search_space(names: list[str] | None = None,
                 backbone: str = "scratch") -> dict[str, tuple]:
    """The settings `fashionnet tune` varies (``names``: a subset), with their ranges: declared
    on each `Setting`, not in a second list. With a pretrained ``backbone`` the scratch
    branch's settings (`SCRATCH_ONLY`) are left out, and naming one is refused."""
    space = {name: s.search for name, s in SETTINGS.items() if s.search}
    if backbone != "scratch":
        space = {n: v for n, v in space.items() if n not in SCRATCH_ONLY}
    if names:
        unknown = [n for n in names if n not in space]
        if unknown:
            scratch = [n for n in unknown if n in SCRATCH_ONLY and SETTINGS[n].search]
            if scratch:
                raise FashionNetError(f"cannot tune {scratch} on the {backbone} backbone (they "
                                      f"act on the scratch category branch): add --backbone "
                                      f"scratch, or tune {', '.join(space)}")
            raise FashionNetError(f"cannot tune {unknown}; tunable settings: "
                                  f"{', '.join(space)}")
        space = {n: space[n] for n in names}
    return space


def describe_default(name: str) -> str:
    """A setting's default as ``--help`` shows it: one value, or one per architecture."""
    fixed = {f.name: f.default for f in dataclasses.fields(TrainConfig)
             if f.default is not dataclasses.MISSING}
    if fixed.get(name) is not None:
        return _show(fixed[name])
    if name in ARCHITECTURE_DEFAULTS["recipe"]:
        by_value: dict[str, list[str]] = {}
        for arch, values in ARCHITECTURE_DEFAULTS.items():
            by_value.setdefault(_show(values[name]), []).append(arch)
        return "; ".join(f"{v} for {', '.join(archs)}" for v, archs in by_value.items())
    return "none"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value) if value != "" else "none"


def default_branch(head_name: str) -> str:
    """Colour-like heads get the shallow RGB branch; all others the deep grayscale one."""
    return "color" if head_name.lower().rstrip("s").endswith(("color", "colour")) else "gray"


@dataclasses.dataclass
class TrainConfig:
    """Every knob of `fashionnet.train`. Field docs are in the README's config section."""

    dataset: str = ""
    heads: list[HeadSpec] = dataclasses.field(default_factory=list)
    multi: list[str] = dataclasses.field(default_factory=list)  # multi-label heads (--multi)
    separator: str = "_"
    multi_separator: str = "|"
    path_column: str = "path"
    input_size: int | None = None
    architecture: str = "disentangled"
    bn_momentum: float | None = None  # None: the architecture's default (ARCHITECTURE_DEFAULTS)
    epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_decay: str | None = None
    split: str = "standard"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 42
    dedupe: bool = True
    holdout: list[str] = dataclasses.field(default_factory=list)
    augment: bool | None = None
    shape_jitter: bool | None = None  # mirror/shift/zoom the grayscale branch's input
    mirror_average: bool | None = None  # predict from the image and its mirror, averaged
    cutout: float | None = None  # random erasing of the grayscale branch's input
    garment_map: bool | None = None  # colour pooling weighted by the grayscale feature map
    category_garment_map: bool | None = None  # ... one map per category, mixed by its prediction
    garment_tone: float | None = None  # garment-only brightness of the grayscale branch's input
    local_contrast: bool | None = None  # local contrast normalisation of the grayscale branch
    random_backdrop: float | None = None  # random backdrop behind the grayscale branch's garment
    category_dropout: float | None = None  # dropout after the grayscale branch's conv blocks
    recolor: float | None = None  # share of training images repainted in another colour
    recolor_outside: float | None = None  # ... in a colour outside the label set, label masked
    balance_classes: bool | None = None  # "balanced" class weights for single-label heads
    label_smoothing: float = 0.0
    patience: int = 0
    strict: bool = False
    allow_outside: bool = False  # manifest paths may leave the manifest's folder
    cache: bool = True
    calibrate: bool = True
    precise_bn: bool | None = None  # re-estimate BatchNorm statistics after training
    backbone: str | None = None  # the category heads' features (BACKBONES); None: the architecture's
    category_attention: bool | None = None  # colour pooled where the category head looks

    def __post_init__(self) -> None:
        if isinstance(self.dataset, os.PathLike):
            self.dataset = os.fspath(self.dataset)
        if self.multi and self.heads:
            # --multi names heads whether or not they are listed: a listed one becomes multi.
            self.heads = [dataclasses.replace(h, kind="multi") if h.name in self.multi else h
                          for h in self.heads]
        problem = SETTINGS["architecture"].check("architecture", self.architecture)
        if problem:
            raise FashionNetError(problem)
        self._from_architecture = set()
        for name, value in ARCHITECTURE_DEFAULTS[self.architecture].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
                self._from_architecture.add(name)
        for name, setting in SETTINGS.items():
            problem = setting.check(name, getattr(self, name))
            if problem:
                raise FashionNetError(problem)
        for name in ("separator", "multi_separator", "path_column"):
            if not getattr(self, name):
                raise FashionNetError(f"{name} must not be empty")
        if self.category_garment_map and not self.garment_map:
            if not self.follows_architecture("garment_map"):
                raise FashionNetError("category_garment_map needs garment_map; turn it on or "
                                      "leave it unset")
            # Implied, so still the architecture's: a new architecture re-derives it.
            self.garment_map = True
        self.check_backbone()
        if self.split == "standard" and self.val_fraction + self.test_fraction >= 1.0:
            raise FashionNetError(f"val_fraction + test_fraction must be below 1 (no training "
                                  f"images left), not {self.val_fraction} + {self.test_fraction}")
        if not all(isinstance(h, HeadSpec) for h in self.heads):
            raise FashionNetError("heads must be HeadSpec objects (or [[heads]] tables)")

    def check_backbone(self) -> None:
        """A pretrained backbone needs the disentangled architecture and leaves the scratch
        branch's settings at the architecture's values; anything else is refused here, before
        minutes of loading."""
        if self.backbone == "scratch":
            if self.category_attention and self.follows_architecture("category_attention"):
                self.category_attention = False  # the architecture's, for its backbone only
            if self.category_attention:
                raise FashionNetError("category_attention reads a pretrained backbone's feature "
                                      "map; add --backbone efficientnet-lite0 or leave "
                                      "category_attention unset")
            return
        fix = "--backbone scratch (backbone = \"scratch\" in a config file)"
        if self.architecture != "disentangled":
            raise FashionNetError(f"backbone {self.backbone} needs the disentangled architecture "
                                  f"(its pixel colour head), not {self.architecture}; the "
                                  f"{self.architecture} network is the scratch one: add {fix} "
                                  f"or leave backbone unset")
        defaults = ARCHITECTURE_DEFAULTS[self.architecture]
        for name in SCRATCH_ONLY:
            value = getattr(self, name)
            if not self.follows_architecture(name) and value != defaults[name]:
                raise FashionNetError(f"{name} = {_show(value)} acts on the scratch category "
                                      f"branch; the {self.backbone} backbone reads fixed "
                                      f"features of each image: add {fix}, or leave {name} "
                                      f"unset")

    def follows_architecture(self, name: str) -> bool:
        """True when setting ``name`` was not given and took the architecture's default."""
        return name in self._from_architecture

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; a new architecture brings its own defaults for the settings
        that were not given explicitly."""
        for name in self._from_architecture:
            changes.setdefault(name, None)
        return dataclasses.replace(self, **changes)

    def with_preset(self, name: str) -> TrainConfig:
        if name not in PRESETS:
            raise FashionNetError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
        return self.with_overrides(**PRESETS[name])

    def head_specs(self, names: list[str]) -> list[HeadSpec]:
        """The configured heads, or default ones for the dataset's head names."""
        unknown = [n for n in self.multi if n not in names]
        if unknown:
            raise FashionNetError(f"multi-label head(s) {unknown} not found in the dataset "
                                  f"(it has: {', '.join(names)})")
        if not self.heads:
            return [HeadSpec(n, kind="multi" if n in self.multi else "single",
                             branch=default_branch(n)) for n in names]
        configured = [h.name for h in self.heads]
        missing = [n for n in configured if n not in names]
        if missing:
            raise FashionNetError(f"configured head(s) {missing} not found in the dataset "
                                  f"(it has: {', '.join(names)})")
        return list(self.heads)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["heads"] = [h.to_dict() for h in self.heads]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise FashionNetError(f"{where}: unknown setting(s) {sorted(unknown)}")
        try:
            heads = [HeadSpec.from_dict(
                {"branch": default_branch(h.get("name", "")), **h}, where)
                for h in data.pop("heads", [])]
        except FashionNetError as exc:
            text = str(exc)
            raise FashionNetError(text if text.startswith(where) else f"{where}: {text}") from None
        except (AttributeError, TypeError):
            raise FashionNetError(f"{where}: heads must be [[heads]] tables") from None
        try:
            return cls(heads=heads, **data)
        except (TypeError, FashionNetError) as exc:
            raise FashionNetError(f"{where}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = read_small_text(path, MAX_CONFIG_BYTES, what="config")
        except UnicodeDecodeError as exc:
            raise FashionNetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                  f"save the config as UTF-8") from None
        return cls.from_toml_text(text, str(path), relative_to=path.parent)

    @classmethod
    def from_toml_text(cls, text: str, where: str = "config",
                       relative_to: str | Path | None = None) -> TrainConfig:
        """``relative_to``: the folder a relative ``dataset`` is read from (the config file's
        folder, as for any path written in a file), not the working folder."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FashionNetError(f"{where}: invalid TOML ({exc})") from None
        except RecursionError:
            raise FashionNetError(f"{where}: invalid TOML (nested too deeply)") from None
        dataset = data.get("dataset")
        if relative_to is not None and isinstance(dataset, str) and dataset:
            data["dataset"] = os.path.normpath(os.path.join(relative_to, dataset))
        return cls.from_dict(data, where)
