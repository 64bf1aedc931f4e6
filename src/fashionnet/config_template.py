"""`fashionnet init-config`: a commented TOML starting point, filled in from a dataset."""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from pathlib import Path

from fashionnet.config import SETTINGS, TrainConfig, default_branch
from fashionnet.data.sources import read_dataset
from fashionnet.errors import FashionNetError


def render_config(dataset: str | Path, heads: str | None = None, multi: str | None = None,
                  dataset_text: str | None = None, allow_outside: bool = False) -> str:
    """The template's text; ``dataset_text`` is how the file names the dataset (default: as
    given), relative to the file's own folder. ``allow_outside``: the manifest's paths may
    leave its folder, and the config says so (``allow_outside = true``)."""
    names = [h.strip() for h in heads.split(",")] if heads else None
    multi_heads = [h.strip() for h in multi.split(",")] if multi else []
    records, found = read_dataset(dataset, names, multi_heads, allow_outside=allow_outside)
    lines = [
        "# FashionNet training config: `fashionnet train --config THIS_FILE --output RUN_DIR`.",
        "# Command-line flags override these values. architecture = \"recipe\" reproduces the",
        "# Keras recipe exactly (96 px, 50 epochs, its schedule, no augmentation, its scratch",
        "# network). backbone = \"scratch\" trains the disentangled category branch from scratch",
        "# (the fast option) instead of on the pretrained EfficientNet-Lite0. The settings",
        "# commented out below follow the architecture unless you set them; shown: its default.",
        "# Each comment is the setting's --help text (one declaration for both).",
    ]
    d = TrainConfig()
    for name in TEMPLATE_SETTINGS:
        setting = SETTINGS[name]
        value = (dataset_text or str(dataset)) if name == "dataset" else getattr(d, name)
        note = setting.help
        if setting.choices:
            note += f" (one of: {' | '.join(setting.choices)})"
        elif setting.kind in (int, float) and setting.range_text():
            note += f" ({setting.range_text()})"
        lines += [""] + [f"# {line}" for line in textwrap.wrap(note, 88)]
        commented = "# " if d.follows_architecture(name) else ""
        lines.append(f"{commented}{name} = {toml_value(value)}")
    if allow_outside:
        lines += ["", *(f"# {line}" for line in textwrap.wrap(SETTINGS["allow_outside"].help, 88)),
                  "allow_outside = true"]
    lines += [
        "",
        "# One [[heads]] table per output, in this order. kind: single | multi;",
        "# branch: gray (deep, no colour) | color (shallow, RGB) | shared (deep, RGB);",
        "# class_weights: \"balanced\" or a table { label = weight }; focal_gamma > 0 for focal loss.",
    ]
    for name in found:
        counts: Counter = Counter()
        missing = 0
        for r in records:
            label = r.labels.get(name)
            if label is None:
                missing += 1
            else:
                counts.update(label if isinstance(label, frozenset) else [label])
        summary = ", ".join(f"{_comment_safe(c)} ({n})" for c, n in sorted(counts.items()))
        lines += ["", f"# {name}: {summary}" + (f"; {missing} unlabelled" if missing else ""),
                  "[[heads]]", f'name = "{name}"',
                  f'kind = "{"multi" if name in multi_heads else "single"}"',
                  f'branch = "{default_branch(name)}"', "loss_weight = 1.0",
                  "# class_weights = \"balanced\""]
        if name in multi_heads:
            lines.append("threshold = 0.5")
    return "\n".join(lines) + "\n"


#: The settings the template writes, in this order (the others keep their defaults).
TEMPLATE_SETTINGS = ("dataset", "architecture", "backbone", "input_size", "epochs", "batch_size",
                     "learning_rate", "lr_decay", "bn_momentum", "split", "val_fraction",
                     "test_fraction", "seed", "holdout", "augment", "shape_jitter",
                     "mirror_average", "cutout", "garment_map", "category_garment_map",
                     "garment_tone", "random_backdrop", "category_dropout", "local_contrast",
                     "category_attention",
                     "recolor", "recolor_outside", "balance_classes", "label_smoothing", "patience",
                     "precise_bn", "multi_separator")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_string(str(v)) for v in value) + "]"
    return toml_string(str(value))


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _comment_safe(text: str) -> str:
    """A label inside a # comment: line breaks and other controls shown escaped, not obeyed."""
    if all(ch.isprintable() for ch in text):
        return text
    return toml_string(text)


def write_config(dataset: str | Path, output: str | Path, heads: str | None = None,
                 multi: str | None = None, overwrite: bool = False,
                 allow_outside: bool = False) -> Path:
    output = Path(output)
    if output.exists() and not overwrite:
        raise FashionNetError(f"{output}: already exists (pass --overwrite to replace it)")
    relative = os.path.relpath(os.path.abspath(dataset), os.path.abspath(output.parent))
    text = render_config(dataset, heads, multi, dataset_text=Path(relative).as_posix(),
                         allow_outside=allow_outside)
    TrainConfig.from_toml_text(text, str(output))  # what we write must load back
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        raise FashionNetError(f"{output}: cannot write ({exc.strerror or exc})") from None
    return output


def config_to_toml(config: TrainConfig, relative_to: str | Path | None = None,
                   header: str = "") -> str:
    """A whole configuration as TOML that `TrainConfig.from_toml` reads back to the same
    settings: unset (architecture-default) settings are left out, the dataset is written
    relative to ``relative_to`` (the file's folder), heads as [[heads]] tables."""
    data = config.to_dict()
    lines = [f"# {line}" for line in header.splitlines()] + ([""] if header else [])
    for name, value in data.items():
        if name == "heads" or value is None or config.follows_architecture(name):
            continue
        if name == "dataset" and value and relative_to is not None:
            value = Path(os.path.relpath(os.path.abspath(value),
                                         os.path.abspath(relative_to))).as_posix()
        lines.append(f"{name} = {toml_value(value)}")
    for head in data["heads"]:
        lines += ["", "[[heads]]"]
        for key, value in head.items():
            if value is None:
                continue
            if isinstance(value, dict):
                inner = ", ".join(f"{toml_string(str(k))} = {toml_value(v)}"
                                  for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
