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
import os
import sys
from pathlib import Path
from typing import Any

from fashionnet.errors import FashionNetError
from fashionnet.heads import HeadSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: Settings that follow the architecture unless given: ``recipe`` (and ``gap``) train exactly as
#: the recipe did; ``disentangled`` reads 64 px (its flattened category features stay small: a
#: 4 MB model, ~2x faster than 96 px; the quick study protocol below is then the default run
#: with fewer epochs) and trains shorter on a warm-up + cosine schedule, with
#: augmentation and counterfactual recolouring, and a faster BatchNorm average (fewer steps).
ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "recipe": {"input_size": 96, "epochs": 50, "lr_decay": "recipe", "augment": False,
               "bn_momentum": 0.99, "recolor": 0.0},
    "gap": {"input_size": 96, "epochs": 50, "lr_decay": "recipe", "augment": False,
            "bn_momentum": 0.99, "recolor": 0.0},
    "disentangled": {"input_size": 64, "epochs": 30, "lr_decay": "cosine", "augment": True,
                     "bn_momentum": 0.9, "recolor": 0.5},
}
LR_DECAYS = ("recipe", "cosine", "none")

#: Named bundles of settings. ``quick`` is the cheap study protocol of docs/accuracy.md: 64 px
#: inputs, 12 epochs on a warm-up + cosine schedule, so that a 6-fold study fits in an hour on
#: two CPU cores; it ranks variants as the 50-epoch protocol does.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"input_size": 64, "epochs": 12, "lr_decay": "cosine", "bn_momentum": 0.9},
}


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
    recolor: float | None = None  # share of training images repainted in another colour
    label_smoothing: float = 0.0
    patience: int = 0
    strict: bool = False
    allow_outside: bool = False  # manifest paths may leave the manifest's folder
    cache: bool = True
    calibrate: bool = True
    precise_bn: bool = True  # re-estimate BatchNorm statistics on training images after training

    def __post_init__(self) -> None:
        if self.multi and self.heads:
            # --multi names heads whether or not they are listed: a listed one becomes multi.
            self.heads = [dataclasses.replace(h, kind="multi") if h.name in self.multi else h
                          for h in self.heads]
        if self.architecture not in ARCHITECTURE_DEFAULTS:
            raise FashionNetError(f"architecture must be one of {list(ARCHITECTURE_DEFAULTS)}, "
                                  f"not {self.architecture!r}")
        self._from_architecture = set()
        for name, value in ARCHITECTURE_DEFAULTS[self.architecture].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
                self._from_architecture.add(name)
        if not 0.0 <= self.recolor <= 1.0:
            raise FashionNetError(f"recolor must be between 0 and 1, not {self.recolor}")
        if not 0.0 < self.bn_momentum < 1.0:
            raise FashionNetError(f"bn_momentum must be between 0 and 1, not {self.bn_momentum}")
        if self.epochs < 1 or self.batch_size < 1:
            raise FashionNetError("epochs and batch_size must be at least 1")
        if self.input_size < 32:
            raise FashionNetError(f"input_size {self.input_size} is too small (minimum 32)")
        if self.lr_decay not in LR_DECAYS:
            raise FashionNetError(f"lr_decay must be one of {LR_DECAYS}, not {self.lr_decay!r}")

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
        heads = [HeadSpec.from_dict(
            {"branch": default_branch(h.get("name", "")), **h}, where)
            for h in data.pop("heads", [])]
        try:
            return cls(heads=heads, **data)
        except TypeError as exc:
            raise FashionNetError(f"{where}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise FashionNetError(f"{path}: cannot read config ({exc.strerror})") from None
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
        dataset = data.get("dataset")
        if relative_to is not None and isinstance(dataset, str) and dataset:
            data["dataset"] = os.path.normpath(os.path.join(relative_to, dataset))
        return cls.from_dict(data, where)
