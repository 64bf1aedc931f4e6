"""A small deterministic garment dataset, generated on the spot: the embedded default.

Silhouettes of dresses, jeans, shirts and shoes in several colours, with cloth texture, uneven
lighting, random placement and a noisy background. Written as a folder per combination
(``red_dress/``), so it goes through exactly the reader users' own folders go through.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLORS = {
    "black": (30, 30, 34),
    "blue": (35, 70, 185),
    "red": (195, 35, 40),
    "green": (40, 150, 65),
}
CATEGORIES = ("dress", "jeans", "shirt", "shoes")
#: Combinations the demo keeps out of training: each colour and category keeps other partners.
DEMO_HOLDOUT = ("red_shoes", "blue_dress", "green_shirt")

# Polygons in a unit square (x, y), drawn scaled into the canvas.
_SHAPES = {
    "dress": [[(0.38, 0.08), (0.62, 0.08), (0.64, 0.35), (0.84, 0.92), (0.16, 0.92),
               (0.36, 0.35)]],
    "jeans": [[(0.3, 0.06), (0.7, 0.06), (0.76, 0.94), (0.56, 0.94), (0.5, 0.4),
               (0.44, 0.94), (0.24, 0.94)]],
    "shirt": [[(0.34, 0.12), (0.66, 0.12), (0.92, 0.3), (0.82, 0.44), (0.7, 0.36),
               (0.7, 0.9), (0.3, 0.9), (0.3, 0.36), (0.18, 0.44), (0.08, 0.3)]],
    "shoes": [[(0.08, 0.42), (0.3, 0.42), (0.34, 0.56), (0.46, 0.6), (0.46, 0.72),
               (0.08, 0.72)],
              [(0.54, 0.48), (0.76, 0.48), (0.8, 0.62), (0.92, 0.66), (0.92, 0.78),
               (0.54, 0.78)]],
}


def render(color: str, category: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """One RGB image of a garment of that colour and category."""
    canvas = size * 2
    background = rng.integers(170, 250, 3)
    noise = rng.normal(0, 12, (canvas, canvas, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8), "RGB")

    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    scale = canvas * rng.uniform(0.7, 0.95)
    ox = rng.uniform(0, canvas - scale)
    oy = rng.uniform(0, canvas - scale)
    for polygon in _SHAPES[category]:
        jittered = [(ox + (x + rng.normal(0, 0.015)) * scale, oy + (y + rng.normal(0, 0.015)) * scale)
                    for x, y in polygon]
        draw.polygon(jittered, fill=255)
    mask = mask.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR)

    base = np.array(COLORS[color], dtype=np.float64) + rng.normal(0, 10, 3)
    yy, xx = np.mgrid[0:canvas, 0:canvas] / canvas
    light = 0.75 + 0.45 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy + 1) / 2
    period = rng.uniform(4, 12)
    weave = 1 + 0.08 * np.sin(2 * np.pi * (xx if rng.random() < 0.5 else yy) * canvas / period)
    cloth = base * (light * weave)[..., None] + rng.normal(0, 8, (canvas, canvas, 3))
    garment = Image.fromarray(np.clip(cloth, 0, 255).astype(np.uint8), "RGB")
    image.paste(garment, (0, 0), mask.filter(ImageFilter.GaussianBlur(1)))
    return image.resize((size, size), Image.Resampling.BILINEAR)


def write_dataset(root: str | Path, per_combination: int = 40, size: int = 96, seed: int = 0,
                  colors: Sequence[str] = tuple(COLORS), categories: Sequence[str] = CATEGORIES
                  ) -> Path:
    """Write ``root/<colour>_<category>/NNNN.{jpg,png}``; same seed, same bytes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for color in colors:
        for category in categories:
            folder = root / f"{color}_{category}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_combination):
                image = render(color, category, rng, size)
                if i % 4 == 3:
                    image.save(folder / f"{i:04d}.png")
                else:
                    image.save(folder / f"{i:04d}.jpg", quality=90)
    return root
