"""Counterfactual recolouring: copies of training photos in other colours, labels to match.

A model trained only on blue jeans learns "jeans are blue" and "dark means jeans" unless it
sees jeans in other colours. From each training image this makes a copy whose garment (the
pixels that differ from the plain backdrop) is repainted in another colour of the label set,
and moves the colour label with it: hue set for chromatic colours, darkened and desaturated
for black, lightened for white. The garment's shading (folds, seams, texture) is kept as
relative brightness, so shape cues survive and only the colour changes.

Copies can also be painted in a colour *outside* the label set (white, brown, green... for a
black/blue/red head), with the colour label masked: the colour head learns nothing from them,
the other heads learn that a shoe is a shoe in colours the data never shows. Fashion's shoes
are all black; photographed elsewhere, white, brown and green shoes were called shoes only
39-75 % of the time.

Only training batches are recoloured; held-out and test images never pass through here.

    plan = RecolorPlan.for_classes(["black", "blue", "red"])
    image2, new_class = plan.recolor(image, source_class=1, rng=rng)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ColorSpec:
    """How to paint a colour: hue in degrees (None = achromatic), saturation and value ranges."""

    hue: float | None
    hue_jitter: float
    saturation: tuple[float, float]
    value: tuple[float, float]


#: Colour names recolouring knows; a head's classes outside this table are never painted.
#: Ranges are for the garment's mean colour; black, blue and red were read off the fashion
#: set's garments (black: value 0.21-0.47, saturation < 0.16; blue: saturation 0.09-0.68).
COLORS: dict[str, ColorSpec] = {
    "black": ColorSpec(None, 0, (0.0, 0.15), (0.1, 0.35)),
    "white": ColorSpec(None, 0, (0.0, 0.06), (0.88, 1.0)),
    "gray": ColorSpec(None, 0, (0.0, 0.08), (0.4, 0.7)),
    "grey": ColorSpec(None, 0, (0.0, 0.08), (0.4, 0.7)),
    "red": ColorSpec(0, 8, (0.45, 0.95), (0.45, 0.9)),
    "orange": ColorSpec(28, 5, (0.7, 1.0), (0.8, 1.0)),
    "yellow": ColorSpec(55, 5, (0.6, 1.0), (0.8, 1.0)),
    "green": ColorSpec(125, 20, (0.4, 0.9), (0.3, 0.8)),
    "blue": ColorSpec(218, 12, (0.2, 0.8), (0.3, 0.85)),
    "navy": ColorSpec(225, 8, (0.5, 0.9), (0.15, 0.35)),
    "purple": ColorSpec(280, 15, (0.4, 0.85), (0.3, 0.75)),
    "pink": ColorSpec(335, 10, (0.25, 0.55), (0.8, 1.0)),
    "brown": ColorSpec(25, 8, (0.45, 0.8), (0.2, 0.5)),
    "beige": ColorSpec(38, 5, (0.15, 0.35), (0.75, 0.95)),
}

#: A pixel this far (RGB distance, 0-1 scale) from the backdrop colour is fully garment.
GARMENT_DISTANCE = (0.08, 0.2)
#: Images whose garment covers less or more of the frame are not recoloured (no clear backdrop).
GARMENT_FRACTION = (0.03, 0.95)


def garment_mask(image: np.ndarray) -> np.ndarray:
    """Soft mask (H, W) in [0, 1]: how far each pixel is from the median border colour."""
    x = image.astype(np.float32) / 255.0
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    background = np.median(border, axis=0)
    distance = np.sqrt(((x - background) ** 2).sum(axis=-1))
    lo, hi = GARMENT_DISTANCE
    return np.clip((distance - lo) / (hi - lo), 0.0, 1.0)


def clear_garment_mask(image: np.ndarray) -> np.ndarray | None:
    """`garment_mask`, or None when the garment covers too little or too much of the frame
    (no clear backdrop: nothing to repaint safely)."""
    mask = garment_mask(image)
    return mask if GARMENT_FRACTION[0] <= float(mask.mean()) <= GARMENT_FRACTION[1] else None


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i],
                    np.float32)


def paint(image: np.ndarray, mask: np.ndarray, color: str, rng: np.random.Generator) -> np.ndarray:
    """Repaint the masked pixels in ``color``, keeping their relative brightness (shading)."""
    spec = COLORS[color]
    x = image.astype(np.float32) / 255.0
    luminance = x @ np.array([0.299, 0.587, 0.114], np.float32)
    weight = mask.sum()
    mean = float((luminance * mask).sum() / max(weight, 1e-6))
    # Shading relative to the garment's mean brightness, softened by a random exponent so that
    # both flat and strongly shaded copies appear.
    shade = np.clip(luminance / max(mean, 0.03), 0.0, 3.0) ** rng.uniform(0.5, 1.0)
    hue = 0.0 if spec.hue is None else (spec.hue + rng.uniform(-1, 1) * spec.hue_jitter) / 360.0
    base = _hsv_to_rgb(hue % 1.0, rng.uniform(*spec.saturation), rng.uniform(*spec.value))
    painted = np.clip(base[None, None, :] * shade[..., None], 0.0, 1.0)
    out = mask[..., None] * painted + (1.0 - mask[..., None]) * x
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class RecolorPlan:
    """Which of a colour head's classes can be painted; ``None`` when fewer than two can."""

    classes: tuple[str, ...]
    paintable: tuple[int, ...]
    #: Colours the table knows and the head does not have (one name per colour: no "grey").
    outside: tuple[str, ...] = ()

    @classmethod
    def for_classes(cls, classes: Sequence[str]) -> RecolorPlan | None:
        paintable = tuple(i for i, c in enumerate(classes) if c.lower() in COLORS)
        if len(paintable) < 2:
            return None
        names = tuple(c.lower() for c in classes)
        outside = tuple(c for c in COLORS if c not in names and c != "grey"
                        and not (c == "gray" and "grey" in names))
        return cls(names, paintable, outside)

    @property
    def unknown(self) -> list[str]:
        return [c for i, c in enumerate(self.classes) if i not in self.paintable]

    def recolor(self, image: np.ndarray, source_class: int,
                rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
        """A copy of ``image`` in another paintable colour and that colour's index, or None
        when the image has no clear garment/backdrop split."""
        mask = clear_garment_mask(image)
        if mask is None:
            return None
        choices = [i for i in self.paintable if i != source_class]
        target = int(rng.choice(choices))
        return paint(image, mask, self.classes[target], rng), target


def recolor_batch(images: np.ndarray, targets: np.ndarray, plan: RecolorPlan,
                  probability: float, rng: np.random.Generator,
                  outside: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Recolour about ``probability`` of a batch's images in the label set's colours, their
    one-hot targets following, and about ``outside`` more in colours outside it, their targets
    masked (a row of -1, as for a missing label)."""
    images = images.copy()
    targets = targets.copy()
    draws = rng.random(len(images))
    for i in np.flatnonzero(draws < probability + (outside if plan.outside else 0.0)):
        row = targets[i]
        if row[0] < 0:  # colour unknown for this record: nothing to move
            continue
        if draws[i] >= probability:
            mask = clear_garment_mask(images[i])
            if mask is not None:
                images[i] = paint(images[i], mask, str(rng.choice(plan.outside)), rng)
                targets[i] = -1.0
            continue
        done = plan.recolor(images[i], int(np.argmax(row)), rng)
        if done is None:
            continue
        images[i], target = done
        targets[i] = 0.0
        targets[i, target] = 1.0
    return images, targets


@dataclasses.dataclass(frozen=True)
class Recoloring:
    """Recolour training batches for one colour head: its output name, plan and rates."""

    output: str
    plan: RecolorPlan
    probability: float
    outside: float = 0.0

