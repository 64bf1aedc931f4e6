"""Write a photo with its predicted labels drawn on it (width 400, green text, top-left)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from fashionnet.data.images import WHITE, _to_rgb
from fashionnet.inference import Prediction

GREEN = (0, 200, 0)


def output_names(inputs: Sequence[str | Path], paths: Sequence[str | Path]) -> list[Path]:
    """Where each file's annotated copy goes, relative to the output folder.

    A file found under a folder given on the command line keeps its place in that tree
    (``shoes/2023/a.jpg`` -> ``2023/a.png``); a file given by itself keeps its name. Names
    that would still collide (``a.jpg`` and ``a.png``, or two folders with an ``a.jpg``)
    get ``-2``, ``-3``, ...: no annotated copy overwrites another.
    """
    folders = [Path(i) for i in inputs if Path(i).is_dir()]
    taken: set[str] = set()
    names = []
    for path in map(Path, paths):
        relative = Path(path.name)
        for folder in folders:
            if path.is_relative_to(folder):
                relative = path.relative_to(folder)
                break
        name, n = relative.with_suffix(".png"), 1
        while name.as_posix().lower() in taken:
            n += 1
            name = relative.with_name(f"{relative.stem}-{n}.png")
        taken.add(name.as_posix().lower())
        names.append(name)
    return names


def annotate(path: str | Path, prediction: Prediction, out_dir: str | Path,
             width: int = 400, name: str | Path | None = None) -> Path:
    """Write ``out_dir/name`` (default: the file's stem + .png). Transparent pixels are
    flattened onto white, as the model saw them."""
    out_dir = Path(out_dir)
    target = out_dir / (name or f"{Path(path).stem}.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as im:
        im = _to_rgb(ImageOps.exif_transpose(im), WHITE)
    im = im.resize((width, max(1, round(im.height * width / im.width))),
                   Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=18)
    y = 10
    for name, head in prediction.heads.items():
        text = f"{name}: {head.describe()}"
        draw.text((10, y), text, fill=GREEN, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += 26
    im.save(target)
    return target
