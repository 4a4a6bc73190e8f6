"""Self-contained HTML QC pages: one report per subject and one index per run.

:func:`write_subject_report` renders one subject's ``qc.json`` content and its volumes into a single HTML file:

* a header (subject, model, calibration) and a banner: red (``FLAG_COLOUR``) listing every flag message when the
  subject is flagged, green (``OK_COLOUR``) "No QC flags" otherwise, plus a grey note when uncalibrated;
* orthogonal views (sagittal, coronal, axial through the brain's centre of mass) of the T1, T2 (fixed display ranges
  in ms, those of the evaluation's Figure 2) and M0 maps, and of the 1 mm references when given;
* per QC contrast, the acquired, synthetic and residual (synthetic - acquired) images in the same views;
* T1 and T2 histograms per tissue class (log axis) with the published ranges shaded and the medians marked;
* tables: self-consistency residuals vs calibrated limits (upper limits or centre +- tolerance bands; cells beyond
  highlighted), plausibility medians vs ranges (cells outside highlighted), label-resolution MPE and metrics against
  references when present.

:func:`write_index` renders one row per subject (flagged subjects first) linking to the subject reports.

Pages are built from the Jinja2 templates in ``pipeline/qc/templates`` (autoescaped) and embed every figure as a
base64 PNG drawn by matplotlib's Agg renderer: no external files, CSS, scripts or fonts. Views are shown in the
neurological convention: the subject's right on the right, superior (sagittal, coronal) or anterior (axial) up.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import jinja2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy import ndimage

from pipeline.files import write_atomically
from pipeline.qc.tissues import TISSUE_CLASSES
from pipeline.reports.figure import MAP_COLORMAPS, MAP_DISPLAY_MAX_MS

TEMPLATE_DIR = pathlib.Path(__file__).parent / "templates"

FLAG_COLOUR = "#d62728"
"""Background of the banner (and index cell) of a flagged subject."""

OK_COLOUR = "#2ca02c"
"""Background of the banner (and index cell) of a subject without flags."""

TISSUE_COLOURS = {"csf": "#1f77b4", "grey_matter": "#9467bd", "white_matter": "#ff7f0e"}
"""Histogram colours (neither the flag red nor the ok green)."""

CONTRAST_TITLES = {"mprage": "T1w MPRAGE", "tse": "T2w TSE", "tse_epg": "T2w TSE (EPG)", "flair": "T2w FLAIR"}

HISTOGRAM_RANGE_MS = {"t1": (200.0, 8000.0), "t2": (20.0, 4000.0)}
"""Fixed (log) axis of each map's histogram; values outside are counted in the end bins."""

HISTOGRAM_TICKS_MS = {"t1": (200, 500, 1000, 2000, 5000), "t2": (20, 50, 100, 200, 500, 1000, 2000)}
HISTOGRAM_BINS = 90
WEIGHTED_DISPLAY_PERCENTILE = 99.5
"""Acquired and synthetic images are shown from 0 to this percentile of the acquired image in the brain."""

RESIDUAL_DISPLAY_FRACTION = 0.25
"""Residuals are shown within +-this fraction of the acquired image's display maximum (comparable across subjects)."""

RESIDUAL_COLORMAP = "PuOr_r"
DPI = 80
PNG_COMPRESSION = 3
"""zlib level of the embedded PNGs (6, PIL's default, takes 3x longer for files 10 % smaller)."""
VIEWS = ("sagittal", "coronal", "axial")
VIEW_GAP = 4
"""Background columns (voxels) between the views of one row."""

FIGURE_WIDTH_IN = 11.0
IMAGE_WIDTH = 0.86
"""Fraction of a view figure's width taken by the views (the rest: colour bar and its labels)."""

ROW_TITLE_IN = 0.25
BOTTOM_MARGIN_IN = 0.1
"""Height (inches) above each row of views (its titles) and below the last one (its colour bar's last label)."""


_WORDS = {"mpe": "MPE", "mae": "MAE", "ssim": "SSIM", "psnr": "PSNR", "hfen": "HFEN", "percent": "(%)", "ms": "(ms)"}


def write_subject_report(path: str | os.PathLike, qc: Mapping, volumes: Mapping[str, np.ndarray]) -> pathlib.Path:
    """Write the self-contained HTML QC report of one subject.

    Args:
        path: the HTML file to write (its folder is created); written atomically.
        qc: the subject's QC record (the content of ``qc.json``): ``subject``, ``model``, ``calibrated``,
            ``calibration`` (both optional), ``flagged``, ``flags`` (each with a ``message``), ``contrasts``,
            ``self_consistency`` ``{contrast: {region: residual}}`` or ``{contrast: {"residual": r, "bias":
            {tissue: b}}}``, ``thresholds`` (the same layout with upper limits, or ``{"centre", "tolerance"}`` bands;
            None when uncalibrated), ``plausibility`` ``{map: {tissue: median ms}}``, ``ranges``
            ``{map: {tissue: [low, high] ms}}``, ``label_resolution`` and ``metrics`` (``{name: value}`` or None).
        volumes: float arrays (X, Y, Z), RAS, 1 mm, all of one shape: ``t1_map``, ``t2_map`` (ms), ``m0_map``
            (a.u.), ``mask`` (0/1), ``tissues`` (0 background, then :data:`~pipeline.qc.tissues.TISSUE_CLASSES`: 1 CSF,
            2 grey matter, 3 white matter) and, for each
            contrast ``c`` of ``qc["contrasts"]``, ``acquired_c``, ``synthetic_c`` (scaled to the acquired image),
            ``residual_c`` (synthetic - acquired); optional ``t1_ref``, ``t2_ref`` (ms).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ValueError: a required volume is missing or the volumes differ in shape or are not 3D.
    """
    contrasts = list(qc["contrasts"])
    _check_volumes(volumes, contrasts)
    brain = np.asarray(volumes["mask"]) > 0
    centre = _centre_of_mass(brain)
    thresholds = qc.get("thresholds")
    context = {
        "qc": qc,
        "details": [(key, qc[key]) for key in ("model", "calibration") if qc.get(key)],
        "flag_colour": FLAG_COLOUR,
        "ok_colour": OK_COLOUR,
        "calibrated": bool(qc.get("calibrated")) and thresholds is not None,
        "centre": centre,
        "maps_figure": _png(_maps_figure(volumes, brain, centre)),
        "contrast_figures": [
            {"title": _contrast_title(c), "png": _png(_contrast_figure(volumes, c, brain, centre))} for c in contrasts
        ],
        "histogram_figure": _png(_histogram_figure(volumes, brain, qc.get("ranges") or {})),
        "self_consistency": _self_consistency_table(qc.get("self_consistency") or {}, thresholds, contrasts),
        "plausibility": _plausibility_table(qc.get("plausibility") or {}, qc.get("ranges") or {}),
        "label_resolution": _named_values(qc.get("label_resolution")),
        "metrics": _named_values(qc.get("metrics")),
    }
    return _write_page(path, "subject.html", context)


def write_index(path: str | os.PathLike, reports: Sequence[Mapping]) -> pathlib.Path:
    """Write the HTML index of a QC run: one row per subject, flagged subjects first (then by subject).

    Args:
        path: the HTML file to write (its folder is created); written atomically.
        reports: one QC record per subject (as for :func:`write_subject_report`) with ``report``, the href of the
            subject's report relative to ``path``'s folder.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    contrasts = list(dict.fromkeys(c for report in reports for c in report.get("contrasts", ())))
    rows = []
    for report in sorted(reports, key=lambda r: (not r.get("flagged"), str(r.get("subject")))):
        residuals, thresholds = report.get("self_consistency") or {}, report.get("thresholds")
        rows.append(
            {
                "subject": report["subject"],
                "href": report["report"],
                "flagged": bool(report.get("flagged")),
                "n_flags": len(report.get("flags") or ()),
                "calibrated": bool(report.get("calibrated")) and report.get("thresholds") is not None,
                "residuals": [_main_cell(residuals.get(c, {}), _at(thresholds, (c,))) for c in contrasts],
            }
        )
    context = {
        "rows": rows,
        "contrasts": [_contrast_title(c) for c in contrasts],
        "n_flagged": sum(row["flagged"] for row in rows),
        "flag_colour": FLAG_COLOUR,
        "ok_colour": OK_COLOUR,
    }
    return _write_page(path, "index.html", context)


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates' Jinja2 environment: autoescaped HTML, undefined names are errors."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _number
    return environment


def _write_page(path: str | os.PathLike, template: str, context: Mapping) -> pathlib.Path:
    """Render ``template`` with ``context`` into ``path`` via a temporary file in the same folder and a rename."""
    return write_atomically(path, _environment().get_template(template).render(**context))


def _check_volumes(volumes: Mapping[str, np.ndarray], contrasts: Sequence[str]) -> None:
    """Raise ValueError unless every required volume is present, 3D and of one shape."""
    required = ["t1_map", "t2_map", "m0_map", "mask", "tissues"]
    required += [f"{kind}_{c}" for c in contrasts for kind in ("acquired", "synthetic", "residual")]
    missing = [key for key in required if key not in volumes]
    if missing:
        raise ValueError(f"QC report: missing volumes {missing}.")
    shapes = {key: np.shape(volume) for key, volume in volumes.items()}
    if len(set(shapes.values())) != 1 or len(shapes["mask"]) != 3:
        raise ValueError(f"QC report: volumes must be 3D arrays of one shape, got {shapes}.")


def _centre_of_mass(brain: np.ndarray) -> tuple[int, int, int]:
    """Voxel index (x, y, z) of the boolean (X, Y, Z) ``brain``'s centre of mass (the grid's centre if empty)."""
    if not brain.any():
        return tuple(n // 2 for n in brain.shape)
    return tuple(round(float(c)) for c in ndimage.center_of_mass(brain))


def _mosaic(volume: np.ndarray, centre: Sequence[int], fill) -> tuple[np.ndarray, list[int]]:
    """The sagittal (Z, Y), coronal (Z, X) and axial (Y, X) planes of an (X, Y, Z) RAS ``volume`` through ``centre``
    side by side, bottom-aligned (shown with ``origin="lower"``: superior / anterior up, right on the right), with
    ``VIEW_GAP`` columns of ``fill`` between them and above the shorter ones; and the first column of each plane."""
    x, y, z = centre
    planes = [volume[x, :, :].T, volume[:, y, :].T, volume[:, :, z].T]
    starts = np.cumsum([0] + [plane.shape[1] + VIEW_GAP for plane in planes[:-1]]).tolist()
    mosaic = np.full((max(p.shape[0] for p in planes), starts[-1] + planes[-1].shape[1]), fill, dtype=volume.dtype)
    for start, plane in zip(starts, planes):
        mosaic[: plane.shape[0], start : start + plane.shape[1]] = plane
    return mosaic, starts


def _views_figure(rows: Sequence[tuple], brain: np.ndarray, centre: Sequence[int]) -> Figure:
    """One row of orthogonal views per ``(title, volume, colormap, vmin, vmax, unit)`` of ``rows``, each with its colour
    bar; (X, Y, Z) volumes shown inside the boolean ``brain`` only (black outside).

    Laid out by hand (one image per row, no layout engine) so that a figure renders in a fraction of a second.
    """
    brain_mosaic, starts = _mosaic(brain, centre, False)
    height, width = brain_mosaic.shape
    image_in = FIGURE_WIDTH_IN * IMAGE_WIDTH * height / width
    total_in = (image_in + ROW_TITLE_IN) * len(rows) + BOTTOM_MARGIN_IN
    figure = Figure(figsize=(FIGURE_WIDTH_IN, total_in))
    FigureCanvasAgg(figure)
    for row, (title, volume, cmap, vmin, vmax, unit) in enumerate(rows):
        bottom = 1.0 - (row + 1) * (image_in + ROW_TITLE_IN) / total_in
        axis = figure.add_axes((0.01, bottom, IMAGE_WIDTH, image_in / total_in))
        axis.set_axis_off()
        mosaic, _ = _mosaic(np.asarray(volume, dtype=np.float32), centre, 0.0)
        shown = axis.imshow(
            np.ma.masked_array(mosaic, mask=~brain_mosaic),
            origin="lower",
            cmap=matplotlib.colormaps[cmap].with_extremes(bad="black"),
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        for view, start, index in zip(VIEWS, starts, centre):
            axis.text(start, height, f"{title}: {view} {index}", fontsize=11, va="bottom")
        colour_bar = figure.colorbar(
            shown, cax=figure.add_axes((0.02 + IMAGE_WIDTH, bottom, 0.02, image_in / total_in))
        )
        colour_bar.set_label(unit, fontsize=10)
        colour_bar.ax.tick_params(labelsize=9)
    return figure


def _maps_figure(volumes: Mapping[str, np.ndarray], brain: np.ndarray, centre: Sequence[int]) -> Figure:
    """Rows: T1, [T1 reference], T2, [T2 reference] (fixed ranges in ms), M0 (0 to its 99.5th percentile)."""
    maps = [("T1", "t1_map"), ("T1 reference", "t1_ref"), ("T2", "t2_map"), ("T2 reference", "t2_ref")]
    rows = []
    for title, key in maps:
        if key in volumes:
            name = title.split()[0]
            rows.append((title, volumes[key], MAP_COLORMAPS[name], 0.0, MAP_DISPLAY_MAX_MS[name], "ms"))
    rows.append(("M0", volumes["m0_map"], "gray", 0.0, _display_max(volumes["m0_map"], brain), "a.u."))
    return _views_figure(rows, brain, centre)


def _contrast_figure(
    volumes: Mapping[str, np.ndarray], contrast: str, brain: np.ndarray, centre: Sequence[int]
) -> Figure:
    """Rows: acquired and synthetic (0 to the acquired image's display maximum) and residual (diverging) images."""
    top = _display_max(volumes[f"acquired_{contrast}"], brain)
    limit = RESIDUAL_DISPLAY_FRACTION * top
    rows = [
        ("acquired", volumes[f"acquired_{contrast}"], "gray", 0.0, top, "a.u."),
        ("synthetic", volumes[f"synthetic_{contrast}"], "gray", 0.0, top, "a.u."),
        ("residual", volumes[f"residual_{contrast}"], RESIDUAL_COLORMAP, -limit, limit, "synthetic − acquired"),
    ]
    return _views_figure(rows, brain, centre)


def _histogram_figure(volumes: Mapping[str, np.ndarray], brain: np.ndarray, ranges: Mapping) -> Figure:
    """T1 and T2 histograms, log axes, each tissue normalised to its peak; published ranges shaded, medians dashed."""
    figure = Figure(figsize=(FIGURE_WIDTH_IN, 3.2))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.16, top=0.86, wspace=0.15)
    tissues = np.asarray(volumes["tissues"])
    axes = figure.subplots(1, 2)
    for axis, name in zip(axes, ("t1", "t2")):
        low, high = HISTOGRAM_RANGE_MS[name]
        edges = np.geomspace(low, high, HISTOGRAM_BINS + 1)
        values = np.asarray(volumes[f"{name}_map"])
        for label, tissue in TISSUE_CLASSES.items():
            colour = TISSUE_COLOURS[tissue]
            if tissue in ranges.get(name, {}):
                axis.axvspan(*ranges[name][tissue], color=colour, alpha=0.15, linewidth=0)
            voxels = values[brain & (tissues == label)]
            voxels = voxels[np.isfinite(voxels)]
            if voxels.size:
                counts, _ = np.histogram(np.clip(voxels, low, high), bins=edges)
                axis.stairs(counts / counts.max(), edges, color=colour, linewidth=1.5, label=_tissue_title(tissue))
                axis.axvline(float(np.median(voxels)), color=colour, linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlim(low, high)
        axis.set_xticks(HISTOGRAM_TICKS_MS[name], [f"{tick:g}" for tick in HISTOGRAM_TICKS_MS[name]])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_ylim(0, 1.05)
        axis.set_xlabel(f"{name.upper()} (ms)", fontsize=10)
        axis.tick_params(labelsize=9)
    axes[0].set_ylabel("voxels (peak = 1)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="upper center", ncols=max(len(labels), 1), fontsize=10, frameon=False)
    return figure


def _display_max(image: np.ndarray, brain: np.ndarray) -> float:
    """The ``WEIGHTED_DISPLAY_PERCENTILE`` of ``image`` inside ``brain`` (whole image if empty); 1 if not positive."""
    top = float(np.percentile(image[brain] if brain.any() else image, WEIGHTED_DISPLAY_PERCENTILE))
    return top if top > 0 else 1.0


def _png(figure: Figure) -> str:
    """Base64 text of ``figure`` saved as PNG at ``DPI``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value: float | None, threshold: float | Mapping | None) -> dict:
    """A table cell: ``value``, its ``limit`` as text (None without a threshold) and whether it is beyond it.

    ``threshold`` is an upper limit or a ``{"centre", "tolerance"}`` band; NaN counts as beyond, as in the checks.
    """
    if value is None or threshold is None:
        return {"value": value, "limit": None, "over": False}
    if isinstance(threshold, Mapping):
        over = not abs(value - threshold["centre"]) <= threshold["tolerance"]
        return {
            "value": value,
            "limit": f"{_number(threshold['centre'])} ± {_number(threshold['tolerance'])}",
            "over": over,
        }
    return {"value": value, "limit": _number(threshold), "over": not value <= threshold}


def _main_cell(record: Mapping, limits: Mapping | None) -> dict:
    """The cell of one contrast's whole-brain ``residual`` and its limit (the figure the index shows)."""
    return _cell(record.get("residual"), _at(limits, ("residual",)))


def _paths(record: Mapping) -> list[tuple[str, ...]]:
    """Key paths of the numbers of one contrast's residual record, nested one level at most.

    ``{"residual": r, "bias": {"csf": b}}`` -> ``[("residual",), ("bias", "csf")]``.
    """
    paths = []
    for key, value in record.items():
        paths += [(key, inner) for inner in value] if isinstance(value, Mapping) else [(key,)]
    return paths


def _at(mapping: Mapping | None, path: Sequence[str]):
    """``mapping[path[0]][path[1]]...``, or None where a key is missing."""
    for key in path:
        if not isinstance(mapping, Mapping) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _self_consistency_table(residuals: Mapping, thresholds: Mapping | None, contrasts: Sequence[str]) -> dict:
    """Columns and rows (one per contrast: title and cells) of the residuals vs thresholds table."""
    paths = list(dict.fromkeys(path for c in contrasts for path in _paths(residuals.get(c, {}))))
    rows = []
    for contrast in contrasts:
        limits = _at(thresholds, (contrast,))
        cells = [_cell(_at(residuals, (contrast, *path)), _at(limits, path)) for path in paths]
        rows.append({"title": _contrast_title(contrast), "cells": cells})
    return {"columns": [" ".join(_tissue_title(key) for key in path) for path in paths], "rows": rows}


def _plausibility_table(medians: Mapping, ranges: Mapping) -> dict:
    """Columns (tissues) and rows (one per map: median ms, range, whether outside) of the plausibility table."""
    tissues = list(dict.fromkeys(tissue for values in medians.values() for tissue in values))
    rows = []
    for name, values in medians.items():
        cells = []
        for tissue in tissues:
            value, span = values.get(tissue), ranges.get(name, {}).get(tissue)
            outside = value is not None and span is not None and not span[0] <= value <= span[1]
            cells.append({"value": value, "range": span, "outside": outside})
        rows.append({"title": name.upper(), "cells": cells})
    return {"columns": [_tissue_title(tissue) for tissue in tissues], "rows": rows}


def _named_values(values: Mapping | None) -> list[tuple[str, float]] | None:
    """``{key: value}`` -> [(readable name, value)], or None when absent."""
    if not values:
        return None
    return [(_readable(key), value) for key, value in values.items()]


def _readable(key: str) -> str:
    """``t1_mpe_percent`` -> ``T1 MPE (%)``."""
    return " ".join(_WORDS.get(word, word.upper() if word in ("t1", "t2", "m0") else word) for word in key.split("_"))


def _contrast_title(contrast: str) -> str:
    return CONTRAST_TITLES.get(contrast, contrast)


def _tissue_title(region: str) -> str:
    """``grey_matter`` -> ``grey matter``; ``csf`` -> ``CSF``; ``grey_white`` -> ``grey/white``."""
    return {"csf": "CSF", "grey_white": "grey/white"}.get(region, region.replace("_", " "))


def _number(value: float | None) -> str:
    """A table number: 3 significant digits, no exponent for values up to 1e5; an en dash for None, NaN as NaN."""
    if value is None:
        return "–"
    if math.isnan(value):
        return "NaN"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
