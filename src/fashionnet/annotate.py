"""Write a photo with its predicted labels drawn on it (width 400, green text, top-left)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from fashionnet.inference import Prediction

GREEN = (0, 200, 0)


def annotate(path: str | Path, prediction: Prediction, out_dir: str | Path,
             width: int = 400) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    im = im.resize((width, max(1, round(im.height * width / im.width))),
                   Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=18)
    y = 10
    for name, head in prediction.heads.items():
        text = f"{name}: {head.describe()}"
        draw.text((10, y), text, fill=GREEN, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += 26
    target = out_dir / f"{Path(path).stem}.png"
    im.save(target)
    return target
