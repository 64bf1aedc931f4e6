"""The doctor's report folder: ``report.html`` (one self-contained page: CSS inline, thumbnails
as data URIs, no CDN), ``report.md``, ``issues.csv``/``issues.json`` (one row per image and
issue) and ``manifest.csv`` (the dataset with an ``exclude`` column, ready to train on).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

from fashionnet.data.images import OPENABLE_FORMATS, SERVICE_MAX_PIXELS
from fashionnet.doctor.issues import (
    EXCLUDED_BY_DEFAULT,
    FIELDS,
    ISSUE_TYPES,
    DoctorResult,
    Issue,
)
from fashionnet.doctor.labels import label_text

#: Images shown per section of report.html and rows per table of report.md (all are in the CSV).
SHOWN = 40
MD_ROWS = 20


def write_report(folder: Path, result: DoctorResult, final: Path, *, shown: int = SHOWN) -> None:
    """Write every file of the report into ``folder`` (which will be renamed to ``final``)."""
    rows = [issue.to_dict() for issue in result.issues]
    with (folder / "issues.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    document = {**result.summary(), "score": "0 to 1, higher is worse", "issues": rows}
    (folder / "issues.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    write_manifest(folder / "manifest.csv", result, final)
    (folder / "report.md").write_text(render_markdown(result, final), encoding="utf-8")
    (folder / "report.html").write_text(render_html(result, shown, final=final),
                                        encoding="utf-8")


def exclusions(result: DoctorResult) -> dict[str, list[str]]:
    """{path: issue types} that pre-fill ``exclude``: `EXCLUDED_BY_DEFAULT` (label conflicts
    only inside exact-duplicate sets), and every exact copy but the first of its set."""
    out: dict[str, list[str]] = {}
    firsts: set[str] = set()
    for issue in result.issues:
        name = issue.issue
        if name == "exact_duplicate" and issue.group not in firsts:
            firsts.add(issue.group)  # issues are sorted by group then path: keep the first
            continue
        if name == "duplicate_label_conflict" and not issue.group.startswith("exact"):
            continue  # a perceptual hash is colour-blind: maybe one product in two colours
        if name in EXCLUDED_BY_DEFAULT or name == "exact_duplicate":
            reasons = out.setdefault(issue.path, [])
            tag = f"{name}:{issue.head}" if issue.head else name
            if tag not in reasons:
                reasons.append(tag)
    return out


def write_manifest(path: Path, result: DoctorResult, final: Path) -> None:
    """The dataset as a manifest: paths relative to the report folder (train it with
    ``--allow-outside``), one column per head, ``exclude`` pre-filled (edit it freely)."""
    excluded = exclusions(result)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *result.heads, "exclude"])
        for file, key, labels in zip(result.paths, result.keys, result.labels):
            relative = Path(os.path.relpath(os.path.abspath(file), os.path.abspath(final)))
            writer.writerow([relative.as_posix(), *(label_text(labels.get(h)) for h in result.heads),
                             "|".join(excluded.get(key, []))])


def thumbnail(path: Path, side: int = 96, quality: int = 80) -> bytes | None:
    """A small JPEG of one image, aspect kept; None when it cannot be read."""
    try:
        with Image.open(path, formats=OPENABLE_FORMATS) as im:
            if im.width * im.height > SERVICE_MAX_PIXELS:  # the doctor's decode cap
                return None
            if im.format in ("JPEG", "MPO"):
                im.draft("RGB", (2 * side, 2 * side))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                im = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im.alpha_composite(rgba)
            im = im.convert("RGB")
            im.thumbnail((side, side))
            out = io.BytesIO()
            im.save(out, "JPEG", quality=quality)
            return out.getvalue()
    except Exception:  # an unreadable file has its own row; no thumbnail is no error
        return None


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def _sources_sentence(result: DoctorResult) -> str:
    if not result.model:
        return ("No model given: label issues, outliers and ambiguous images need one "
                "(`--model RUN`).")
    parts = [f"{head}: {s['held-out']} from the run's own held-out predictions (validation + "
             f"test split), {s['cross-validated']} cross-validated on its embeddings"
             for head, s in result.sources.items()]
    return ("Out-of-sample probabilities per head — " + "; ".join(parts) + "."
            if parts else "No head could be checked for label issues.")


def _group_rows(result: DoctorResult) -> dict[str, list[Issue]]:
    sections: dict[str, list[Issue]] = {}
    for issue in result.issues:
        sections.setdefault(issue.issue, []).append(issue)
    return sections


def _describe(issue: Issue) -> str:
    """``color: blue → red`` (given → suggested), or what is known of it."""
    change = f"{issue.given} → {issue.suggested}" if issue.suggested else issue.given
    return f"{issue.head}: {change}" if issue.head else change


def render_markdown(result: DoctorResult, final: Path | None = None) -> str:
    total = len(result.paths)
    counts = result.counts()
    lines = [f"# Dataset doctor: `{result.dataset}`", "",
             f"{total} images, heads: {', '.join(result.heads)}"
             + (f"; model `{result.model}`" if result.model else "") + ".", "",
             _sources_sentence(result), ""]
    lines += ["| issue | images | share | what it means |", "| --- | --- | --- | --- |"]
    for name, what in ISSUE_TYPES.items():
        if name in counts:
            lines.append(f"| {name} | {counts[name]} | {_percent(counts[name], total)} | {what} |")
    if not counts:
        lines.append("| (none) | 0 | 0 % | |")
    for note in result.notes:
        lines.append(f"\n- note: {note}")
    lines += ["", "## Labels per head", ""]
    for head, table in result.label_counts.items():
        lines.append(f"- **{head}**: " + ", ".join(f"{k} {v}" for k, v in table.items()))
    for matrix in result.combinations:
        a, b = matrix["heads"]
        lines += ["", f"## Combinations: {a} × {b}", "",
                  f"| {a} \\ {b} | " + " | ".join(matrix["columns"]) + " |",
                  "| --- | " + " | ".join("---" for _ in matrix["columns"]) + " |"]
        for row, counts_row in zip(matrix["rows"], matrix["counts"]):
            lines.append(f"| {row} | " + " | ".join(str(c) if c else "**0**" for c in counts_row)
                         + " |")
        if matrix["empty"]:
            lines += ["", f"Never seen together ({len(matrix['empty'])}): "
                      + ", ".join(f"`{c}`" for c in matrix["empty"])
                      + ". A model trained on this data has to generalise to these."]
    for name, rows in _group_rows(result).items():
        lines += ["", f"## {_rows_title(name, rows)}", "", ISSUE_TYPES.get(name, ""), "",
                  "| score | path | head | given | suggested | source | detail |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for issue in rows[:MD_ROWS]:
            lines.append(f"| {issue.score:.3f} | `{issue.path}` | {issue.head} | {issue.given} | "
                         f"{issue.suggested} | {issue.source} | {_md_cell(issue.detail)} |")
        if len(rows) > MD_ROWS:
            lines.append(f"\n{len(rows) - MD_ROWS} more rows in `issues.csv`.")
    steps = next_steps(result, str(final) if final else "REPORT")
    lines += ["", "## What to do next", "", *(f"{i}. {step}" for i, step in
                                                 enumerate(steps, start=1))]
    return "\n".join(lines) + "\n"


def next_steps(result: DoctorResult, report: str = "REPORT") -> list[str]:
    """What a user does with the report, in order (Markdown inline code)."""
    return [
        f"Open `{report}/manifest.csv`: every image, one row each, with an `exclude` column "
        f"already set for {', '.join(EXCLUDED_BY_DEFAULT)} and the extra exact copies.",
        "Look at the images flagged above; set `exclude` to 1 for more, or back to empty for "
        "those you want to keep; fix a wrong label in its column.",
        f"Train on the edited manifest: `fashionnet train --dataset {report}/manifest.csv "
        f"--allow-outside --output runs/cleaned` (its paths point at your images, outside "
        f"the report folder). No image is deleted or moved.",
        f"`{report}/issues.csv` has every finding, one row per image and head.",
    ]


def _rows_title(name: str, rows: list[Issue]) -> str:
    """``label issue (12 images)`` or ``label issue (12 images, 14 rows)`` when an image has
    findings for several heads: counts never mix images and rows without saying so."""
    images = len({issue.path for issue in rows})
    return (f"{name} ({images} image{'s' if images != 1 else ''}"
            + (f", {len(rows)} rows" if len(rows) != images else "") + ")")


def _md_cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "…"


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:right}th:first-child,td:first-child,.wide th:last-child{text-align:left}.empty{background:#fdd;
font-weight:bold}.grid{display:flex;flex-wrap:wrap;gap:8px}.card{width:150px;border:1px solid
#ccc;border-radius:4px;padding:4px;font-size:12px;overflow-wrap:anywhere}.card img{display:block;
margin:auto;max-width:140px;max-height:110px}.score{font-weight:bold}.muted{color:#666}
.conflict{color:#b00}
"""


def render_html(result: DoctorResult, shown: int = SHOWN,
                thumb: Callable[[Path], bytes | None] = thumbnail,
                final: Path | None = None) -> str:
    esc = html.escape
    total = len(result.paths)
    counts = result.counts()
    path_of = dict(zip(result.keys, result.paths))
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width,initial-scale=1'>",
           f"<title>Dataset doctor: {esc(result.dataset)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Dataset doctor: <code>{esc(result.dataset)}</code></h1>",
           f"<p>{total} images, heads: {esc(', '.join(result.heads))}"
           + (f"; model <code>{esc(result.model)}</code>" if result.model else "") + ".</p>",
           f"<p>{esc(_sources_sentence(result))}</p>",
           "<table class='wide'><tr><th>issue</th><th>images</th><th>share</th><th>what it means</th></tr>"]
    for name, what in ISSUE_TYPES.items():
        if name in counts:
            out.append(f"<tr><td><a href='#{name}'>{name}</a></td><td>{counts[name]}</td>"
                       f"<td>{_percent(counts[name], total)}</td><td style='text-align:left'>"
                       f"{esc(what)}</td></tr>")
    out.append("</table>")
    out += [f"<p class='muted'>note: {esc(n)}</p>" for n in result.notes]
    out.append("<h2>Labels per head</h2>")
    for head, table in result.label_counts.items():
        out.append(f"<p><b>{esc(head)}</b>: "
                   + ", ".join(f"{esc(k)} {v}" for k, v in table.items()) + "</p>")
    for matrix in result.combinations:
        a, b = matrix["heads"]
        out.append(f"<h2>Combinations: {esc(a)} × {esc(b)}</h2><table><tr><th>{esc(a)} \\ "
                   f"{esc(b)}</th>" + "".join(f"<th>{esc(c)}</th>" for c in matrix["columns"])
                   + "</tr>")
        for row, cells in zip(matrix["rows"], matrix["counts"]):
            out.append(f"<tr><td>{esc(row)}</td>" + "".join(
                "<td class='empty'>0</td>" if not c else f"<td>{c}</td>" for c in cells)
                + "</tr>")
        out.append("</table>")
        if matrix["empty"]:
            out.append(f"<p>Never seen together ({len(matrix['empty'])}): "
                       + ", ".join(f"<code>{esc(c)}</code>" for c in matrix["empty"])
                       + ". A model trained on this data has to generalise to these.</p>")
    for name, rows in _group_rows(result).items():
        out.append(f"<h2 id='{name}'>{esc(_rows_title(name, rows))}</h2>"
                   f"<p>{esc(ISSUE_TYPES.get(name, ''))}; worst first.</p><div class='grid'>")
        for issue in rows[:shown]:
            data = thumb(path_of[issue.path]) if issue.issue != "unreadable" else None
            image = (f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>"
                     if data else "<div class='muted'>(no image)</div>")
            label = _describe(issue)
            out.append(f"<div class='card'>{image}<div class='score'>{issue.score:.3f}</div>"
                       f"<div>{esc(issue.path)}</div>"
                       + (f"<div class='conflict'>{esc(label)}</div>" if label else "")
                       + (f"<div class='muted'>{esc(issue.group)} {esc(issue.source)}</div>")
                       + (f"<div class='muted'>{esc(issue.detail[:200])}</div>" if issue.detail
                          else "") + "</div>")
        out.append("</div>")
        if len(rows) > shown:
            out.append(f"<p class='muted'>{len(rows) - shown} more rows in issues.csv.</p>")
    out.append("<h2 id='next'>What to do next</h2><ol>")
    for step in next_steps(result, str(final) if final else "REPORT"):
        out.append("<li>" + re.sub(r"`([^`]*)`", r"<code>\1</code>", esc(step, quote=False))
                   + "</li>")
    out.append("</ol></body></html>")
    return "\n".join(out) + "\n"
