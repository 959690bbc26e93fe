"""Per-subject HTML report: what was converted, what each image looks like, what the gate said.

The page is self-contained (inline CSS, no scripts, no external resources), so it opens offline
from any published copy; thumbnails are PNG files in ``figures/`` beside it. Everything shown
comes from the converted BIDS tree and the GateReport, which is redacted before it reaches us,
so the report adds no patient data of its own.

Thumbnails are drawn in neurological convention (the subject's left on the picture's left) after
reorienting to the closest canonical (RAS+) orientation, and each side of each panel is labelled
from the reoriented affine's axis codes, so a label always sits where that anatomy is.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CELL", "Panel", "Thumbnail", "dwi_shells", "render_slices", "write_subject_report"]

CELL = 160  # px: each view's slice is fitted into a CELL x CELL square
MARGIN = 18  # px around each slice, where the orientation letters go
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
# view, canonical axis across the picture, axis up the picture, axis the slice is cut along
_VIEWS = (("sagittal", 1, 2, 0), ("coronal", 0, 2, 1), ("axial", 0, 1, 2))
_LABEL_RGB = (255, 214, 90)
_TITLE_RGB = (150, 150, 150)
TIMES = "\N{MULTIPLICATION SIGN}"

CSS = """
:root{--fg:#1d2430;--muted:#5d6778;--line:#d9dee7;--bg:#f6f7f9;--ok:#17794a;--bad:#b42318;
--warn:#9a6700;--accent:#2457a6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 10px;padding-bottom:4px;
border-bottom:1px solid var(--line)}h3{font-size:15px;margin:18px 0 8px}
nav{margin:6px 0 0;color:var(--muted)}nav a{margin-right:14px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);width:100%}
th,td{text-align:left;padding:5px 9px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#eef1f5;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv,table.auto{width:auto}table.kv th{background:none;font-weight:500;color:var(--muted)}
.cards{display:flex;flex-direction:column;gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:12px 16px}
.card h3{margin:0 0 10px}.card .row{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:center}
.card img{display:block;max-width:100%;height:auto;background:#000;border-radius:4px}
table.facts{width:auto;border:0;background:none}table.facts th,table.facts td{border:0;
padding:1px 12px 1px 0}table.facts th{background:none;font-weight:500;color:var(--muted)}
table.facts td{font-weight:600}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
color:#fff;background:var(--muted)}
.ok{background:var(--ok)}.bad{background:var(--bad)}.warn{background:var(--warn)}
.muted{color:var(--muted)}.reason{color:var(--warn)}code{font-size:12px;word-break:break-all}
.track{width:320px}.bar{height:10px;background:var(--accent);border-radius:2px;min-width:1px}
.note{color:var(--muted);font-size:13px;margin:6px 0 12px}
footer{margin-top:36px;color:var(--muted);font-size:12px}
"""


@dataclass(frozen=True)
class Panel:
    """One view in a thumbnail: where its slice sits in the PNG and what each side faces."""

    view: str  # "sagittal", "coronal" or "axial"
    box: tuple[int, int, int, int]  # left, top, right, bottom of the slice in px (exclusive)
    left: str  # anatomical direction at the picture's left edge: one of L R A P S I
    right: str
    top: str
    bottom: str


@dataclass(frozen=True)
class Thumbnail:
    """A rendered three-view PNG and its layout."""

    path: Path
    panels: tuple[Panel, ...]
    cut: tuple[int, int, int]  # canonical (RAS+) voxel indices the three slices go through


def esc(value: object) -> str:
    """Text for HTML, quotes included: descriptions and names are user data."""
    return html.escape(str(value), quote=True)


def fmt(value: object) -> str:
    """A parameter value as people read it: 2.0 -> 2, lists comma-separated."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def page(title: str, body: str, footer: str) -> str:
    """A whole HTML document around a body; the empty icon stops a favicon request."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{CSS}</style></head>'
        f"<body><main>{body}<footer>{footer}</footer></main></body></html>\n"
    )


def table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Rows of ready-made (already escaped) cells; header names ending in '#' are numeric."""
    ths = "".join(
        f'<th class="num">{esc(h[:-1])}</th>' if h.endswith("#") else f"<th>{esc(h)}</th>"
        for h in head
    )
    numeric = [h.endswith("#") for h in head]
    trs = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if n else f"<td>{c}</td>"
            for c, n in zip(r, numeric, strict=True)
        )
        + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def _nibabel() -> Any:
    """nibabel on first use (with numpy it costs most of a second of start-up), typed loosely
    because its orientation helpers carry no annotations."""
    import nibabel

    return nibabel


def _first_volume(img: Any) -> np.ndarray:
    """The first 3D volume in the file's own data type, read without loading the rest of a 4D
    series (a float32 copy of a 512x512x400 T1w alone would be 400 MB)."""
    import numpy as np

    ndim = len(img.shape)
    index = (slice(None),) * min(ndim, 3) + (0,) * max(ndim - 3, 0)
    data: np.ndarray = np.asanyarray(img.dataobj[index])
    return data.reshape(data.shape + (1,) * (3 - data.ndim))


def _window(data: np.ndarray) -> tuple[float, float]:
    """Grey levels for black and white, shared by the three views so they compare.

    The top end is a high percentile of the head, not of the whole field of view: background
    can be most of the voxels and would push the percentile down into the brain, washing out
    anything brighter (vessels, fat, a marker).
    """
    import numpy as np

    # a regular sample of about a million voxels gives the same percentiles in a tenth the time
    flat = data.reshape(-1)  # a view of a volume as read (C-contiguous): no copy
    sample = np.nan_to_num(flat[:: max(1, data.size // 1_000_000)].astype(np.float32))
    lo, top = (float(v) for v in np.percentile(sample, [0.5, 99.9]))
    head = sample[sample > lo + 0.1 * (top - lo)]
    hi = float(np.percentile(head, 99.5)) if head.size else top
    return lo, hi if hi > lo else lo + 1.0


def render_slices(nifti: Path, png: Path, *, cut_mm: Sequence[float] | None = None) -> Thumbnail:
    """Draw sagittal, coronal and axial slices side by side, each side labelled.

    The slices go through the middle of the volume (first volume of a 4D series), or through the
    scanner coordinate ``cut_mm`` (RAS mm) when given.
    """
    import numpy as np

    nib = _nibabel()
    img = nib.load(nifti)
    volume = _first_volume(img)
    lo, hi = _window(volume)
    # the closest RAS orientation by flips and axis swaps: views of the volume, never a copy
    ornt = nib.orientations.io_orientation(img.affine)
    data = nib.orientations.apply_orientation(volume, ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)
    codes = nib.orientations.aff2axcodes(affine)
    zooms = [float(z) for z in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
    if cut_mm is None:
        cut = tuple(n // 2 for n in data.shape)
    else:
        ijk = np.linalg.inv(affine) @ np.array([*cut_mm[:3], 1.0])
        cut = tuple(
            int(np.clip(round(v), 0, n - 1)) for v, n in zip(ijk[:3], data.shape, strict=True)
        )
    step = CELL + 2 * MARGIN
    canvas = Image.new("RGB", (3 * step, step), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    label_font, title_font = ImageFont.load_default(13), ImageFont.load_default(10)
    panels = []
    for i, (view, across, up, along) in enumerate(_VIEWS):
        plane = data[(slice(None),) * along + (cut[along],)]  # axes (across, up)
        plane = np.nan_to_num(plane.astype(np.float32))  # only this slice as floats
        picture = plane.T[::-1]  # columns run along `across`, rows run down `up`
        width_mm, height_mm = plane.shape[0] * zooms[across], plane.shape[1] * zooms[up]
        scale = CELL / max(width_mm, height_mm, 1e-6)
        w, h = max(1, round(width_mm * scale)), max(1, round(height_mm * scale))
        grey = np.clip((picture - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        tile = Image.fromarray(np.ascontiguousarray(grey)).resize((w, h), Image.Resampling.BILINEAR)
        x0, y0 = i * step + MARGIN + (CELL - w) // 2, MARGIN + (CELL - h) // 2
        canvas.paste(tile.convert("RGB"), (x0, y0))
        panel = Panel(
            view,
            (x0, y0, x0 + w, y0 + h),
            left=_OPPOSITE[codes[across]],
            right=codes[across],
            top=codes[up],
            bottom=_OPPOSITE[codes[up]],
        )
        half = MARGIN // 2
        for text, (cx, cy) in (
            (panel.left, (x0 - half, y0 + h // 2)),
            (panel.right, (x0 + w + half, y0 + h // 2)),
            (panel.top, (x0 + w // 2, y0 - half)),
            (panel.bottom, (x0 + w // 2, y0 + h + half)),
        ):
            draw.text((cx, cy), text, fill=_LABEL_RGB, font=label_font, anchor="mm")
        draw.text((i * step + 3, 2), view, fill=_TITLE_RGB, font=title_font)
        panels.append(panel)
    png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(png, optimize=True)
    return Thumbnail(png, tuple(panels), (cut[0], cut[1], cut[2]))


def dwi_shells(bval: Path) -> list[tuple[int, int]]:
    """(b-value rounded to 50, number of volumes) for each shell, lowest b first."""
    values = [float(v) for v in bval.read_text().split()]
    shells: dict[int, int] = {}
    for b in values:
        key = int(round(b / 50.0) * 50)
        shells[key] = shells.get(key, 0) + 1
    return sorted(shells.items())


def bids_stem(rel: str) -> str:
    """A BIDS file name without folders and without its extension(s)."""
    name = rel.rsplit("/", 1)[-1]
    return re.sub(r"\.(nii\.gz|nii|json|bval|bvec|tsv\.gz|tsv)$", "", name)


def _figure_name(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", bids_stem(rel)) + ".png"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _facts(img: Any, sidecar: dict[str, Any]) -> list[tuple[str, str]]:
    shape = tuple(int(n) for n in img.shape)
    zooms = [float(z) for z in img.header.get_zooms()]
    facts = [
        ("shape", f" {TIMES} ".join(str(n) for n in shape)),
        ("voxel", f" {TIMES} ".join(f"{z:.3g}" for z in zooms[:3]) + " mm"),
        ("volumes", str(shape[3] if len(shape) > 3 else 1)),
    ]
    tr = sidecar.get("RepetitionTime")
    if tr is None and len(shape) > 3 and len(zooms) > 3:
        unit = img.header.get_xyzt_units()[1]
        tr = zooms[3] / 1000 if unit == "msec" else zooms[3]
    if isinstance(tr, int | float):
        facts.append(("TR", f"{tr:g} s"))
    if isinstance(te := sidecar.get("EchoTime"), int | float):
        facts.append(("TE", f"{te * 1000:g} ms"))
    if isinstance(flip := sidecar.get("FlipAngle"), int | float):
        facts.append(("flip", f"{flip:g}°"))
    return facts


def _image_card(bids_dir: Path, rel: str, figures: Path) -> str:
    """One converted image: thumbnail and key facts, or why it could not be drawn."""
    path = bids_dir / rel
    stem = bids_stem(rel)
    anchor = "img-" + re.sub(r"[^A-Za-z0-9_-]", "_", stem)
    body = f'<div class="card" id="{esc(anchor)}"><h3>{esc(rel.rsplit("/", 1)[-1])}</h3>'
    nib = _nibabel()
    try:
        img = nib.load(path)
        thumb = render_slices(path, figures / _figure_name(rel))
        facts = _facts(img, _read_json(path.with_name(stem + ".json")))
    except (OSError, ValueError, TypeError, nib.filebasedimages.ImageFileError) as exc:
        # a report must never fail a job: say what went wrong and carry on
        return body + f'<p class="reason">could not be drawn: {esc(exc)}</p></div>'
    views = ", ".join(p.view for p in thumb.panels)
    width, height = 3 * (CELL + 2 * MARGIN), CELL + 2 * MARGIN
    body += (
        f'<div class="row"><img src="figures/{esc(thumb.path.name)}" width="{width}" '
        f'height="{height}" alt="{esc(views)} slices of {esc(stem)}">'
    )
    bval = path.with_name(stem + ".bval")
    if bval.is_file():
        try:
            facts.append(("shells", ", ".join(f"b={b} {TIMES}{n}" for b, n in dwi_shells(bval))))
        except (OSError, ValueError):
            facts.append(("shells", "unreadable .bval"))
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts)
    return body + f'<table class="facts">{rows}</table></div></div>'


def _overview(label: str, session: str, gate: dict[str, Any], heuristic: str) -> str:
    passed = bool(gate.get("passed"))
    verdict = (
        '<span class="badge ok">passed</span>'
        if passed
        else f'<span class="badge bad">failed</span> {esc(gate.get("failure", ""))}'
    )
    phi = gate.get("phi") or {}
    hits = phi.get("hits") or []
    phi_text = f"{len(phi.get('identifiers') or [])} identifier fields checked, {len(hits)} hits"
    if hits:
        phi_text += ": " + "; ".join(f"{h.get('field')} in {h.get('file')}" for h in hits[:10])
    rows = [
        ("subject", f"sub-{label}"),
        *([("session", f"ses-{session}")] if session else []),
        ("heuristic", heuristic),
        ("converted files", str(len(gate.get("converted_files") or []))),
        ("PHI scan", phi_text),
    ]
    return (
        '<table class="kv">'
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        + f"<tr><th>gate</th><td>{verdict}</td></tr></table>"
    )


def _series_section(gate: dict[str, Any], anchors: dict[str, str]) -> str:
    rows = []
    for s in gate.get("series") or []:
        outputs = []
        for out in s.get("outputs") or []:
            # the folder is implied by the name; the full path stays in the tooltip
            name = f'<code title="{esc(out)}">{esc(bids_stem(str(out)))}</code>'
            link = anchors.get(bids_stem(str(out)))
            outputs.append(f'<a href="#{esc(link)}">{name}</a>' if link else name)
        result = "<br>".join(outputs) or f'<span class="reason">{esc(s.get("reason", ""))}</span>'
        if s.get("note"):  # e.g. a side product dcm2niix wrote and bidsapp did not publish
            result += f'<br><span class="muted">{esc(s["note"])}</span>'
        if s.get("guess"):  # dcm2niix's BidsGuess differs: a name for the curator to check
            result += f'<br><span class="reason">{esc(s["guess"])}</span>'
        # heudiconv writes image types as a Python tuple: show just the words
        image_type = re.sub(r"[()\[\]']", "", str(s.get("image_type", "")))
        rows.append(
            [esc(s.get(k, "")) for k in ("session", "series_id", "description")]
            + [esc(image_type)]
            + [esc(s.get(k, "")) for k in ("dims", "tr", "te", "files")]
            + [result]
        )
    head = ["session", "series", "description", "image type", "dims", "TR", "TE", "files#"]
    if not any(s.get("session") for s in gate.get("series") or []):
        head, rows = head[1:], [r[1:] for r in rows]
    text = table([*head, "BIDS file or reason"], rows) if rows else "<p>No series recorded.</p>"
    doubtful = [s for s in gate.get("series") or [] if s.get("guess")]
    if doubtful:
        listed = ", ".join(f"{esc(s.get('series_id', ''))} ({esc(s['guess'])})" for s in doubtful)
        text = (
            f'<p class="reason">Check these first: named otherwise than dcm2niix guesses: '
            f"{listed}.</p>" + text
        )
    skipped = gate.get("skipped_files") or []
    if skipped:
        text += f"<h3>Files not converted ({len(skipped)})</h3>" + table(
            ["file", "reason"],
            ([f"<code>{esc(f.get('file', ''))}</code>", esc(f.get("reason", ""))] for f in skipped),
        )
    return text


def _findings_section(gate: dict[str, Any]) -> str:
    validator = gate.get("validator") or {}
    if validator.get("crashed"):
        return f'<p class="reason">The validator could not run: {esc(validator["crashed"])}</p>'
    findings = gate.get("findings") or []
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        groups.setdefault(str(f.get("code", "")), []).append(f)
    counts = {sev: sum(f.get("severity") == sev for f in findings) for sev in ("error", "warning")}
    summary = f"<p>{counts['error']} errors, {counts['warning']} warnings.</p>"
    if not groups:
        return summary
    order = sorted(groups, key=lambda c: (groups[c][0].get("severity") != "error", -len(groups[c])))
    rows = []
    for code in order:
        first = groups[code][0]
        sev = str(first.get("severity", ""))
        cls = {"error": "bad", "warning": "warn"}.get(sev, "")
        rows.append(
            [
                f'<span class="badge {cls}">{esc(sev)}</span>',
                f"<code>{esc(code)}</code>",
                str(len(groups[code])),
                f"<code>{esc(first.get('location', ''))}</code>",
                esc(str(first.get("message", ""))[:300]),
            ]
        )
    return summary + table(["severity", "code", "count#", "example location", "message"], rows)


def _timings_section(timings: dict[str, float]) -> str:
    if not timings:
        return "<p>No timings recorded.</p>"
    stages = {k: v for k, v in timings.items() if k != "total"}
    longest = max(stages.values(), default=0.0) or 1.0
    rows = []
    for k, v in stages.items():
        bar = f'<div class="bar" style="width:{100 * v / longest:.1f}%"></div>'
        rows.append([esc(k), f"{v:.1f} s", f'<div class="track">{bar}</div>'])
    if "total" in timings:
        rows.append(["<b>total</b>", f"<b>{timings['total']:.1f} s</b>", ""])
    return table(["stage", "time#", ""], rows, cls="kv")


def write_subject_report(
    dest: Path,
    *,
    bids_dir: Path,
    label: str,
    session: str,
    gate: dict[str, Any],
    heuristic: str,
    versions: dict[str, str],
    timings: dict[str, float],
) -> Path:
    """Write dest/report.html and dest/figures/*.png; returns the page's path.

    ``bids_dir`` holds ``sub-<label>/``; ``gate`` is a GateReport as a dict (already redacted).
    """
    figures = dest / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):  # a rerun must not leave thumbnails of vanished files
        old.unlink()
    niftis = [
        rel
        for rel in gate.get("converted_files") or []
        if rel.endswith((".nii", ".nii.gz")) and (bids_dir / rel).is_file()
    ]
    anchors = {bids_stem(r): "img-" + re.sub(r"[^A-Za-z0-9_-]", "_", bids_stem(r)) for r in niftis}
    # decompressing, resampling and PNG encoding release the GIL: two threads use both cores
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        cards = "".join(pool.map(lambda rel: _image_card(bids_dir, rel, figures), niftis))
    name = f"sub-{label}" + (f" ses-{session}" if session else "")
    body = (
        f'<h1>{esc(name)} <span class="muted">conversion report</span></h1>'
        '<nav><a href="#series">Series</a><a href="#images">Images</a>'
        '<a href="#validator">Validator</a><a href="#timings">Timings</a>'
        '<a href="#versions">Versions</a></nav>'
        f"<h2>Overview</h2>{_overview(label, session, gate, heuristic)}"
        f'<h2 id="series">Source series</h2>{_series_section(gate, anchors)}'
        f'<h2 id="images">Images ({len(niftis)})</h2>'
        "<p class=\"note\">Neurological convention: the subject's left is on the picture's left. "
        "Slices through the middle of each volume (first volume of a series).</p>"
        f'<div class="cards">{cards or "<p>No images.</p>"}</div>'
        f'<h2 id="validator">Validator findings</h2>{_findings_section(gate)}'
        f'<h2 id="timings">Stage timings</h2>{_timings_section(timings)}'
        f'<h2 id="versions">Versions</h2>'
        + table(["tool", "version"], ([esc(k), esc(v)] for k, v in versions.items()), cls="kv")
    )
    out = dest / "report.html"
    footer = f"bidsapp {esc(versions.get('bidsapp', ''))} subject report"
    out.write_text(page(f"{name} — bidsapp report", body, footer), encoding="utf-8")
    return out
