"""The paper's Figure 2: one sagittal slice of the predicted and reference maps and of the inputs.

Layout (one column per model, then the reference):

* row 1: T1 maps (ms), row 2: |prediction - reference| of T1 (ms);
* row 3: T2 maps (ms), row 4: |prediction - reference| of T2 (ms);
* row 5: the input weighted images T1w MPRAGE, T2w TSE and T2w FLAIR (arbitrary units, each scaled to
  its 99.5th percentile inside the brain).

Maps and errors are shown inside the brain mask only (background black), the inputs as acquired.
Slices are shown with superior up and anterior to the right.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from pipeline.reports.evaluation import REFERENCE_KEYS, prediction_path, read_ras

MAP_DISPLAY_MAX_MS = {"T1": 2500.0, "T2": 200.0}
"""Top of each map's colour range (from 0): white/grey matter contrast visible, CSF saturated."""

ERROR_DISPLAY_MAX_MS = {"T1": 500.0, "T2": 40.0}
"""Top of the colour range of each map's absolute error."""

MAP_COLORMAPS = {"T1": "inferno", "T2": "viridis"}
ERROR_COLORMAP = "magma"

WEIGHTED_TITLES = {"t1w": "T1w MPRAGE", "t2w": "T2w TSE", "flair": "T2w FLAIR"}
"""Manifest key -> title of the input weighted images (the network's channel order)."""

WEIGHTED_DISPLAY_PERCENTILE = 99.5


def _show(
    figure: Figure,
    axis,
    image: np.ndarray,
    title: str,
    cmap: str,
    vmax: float,
    unit: str | None,
    brain: np.ndarray | None = None,
) -> None:
    """Draw a (Y, Z) sagittal slice with superior up, from 0 to ``vmax``.

    Pixels outside the boolean (Y, Z) ``brain`` mask, if given, are black; a colour bar labelled ``unit``
    is added if ``unit`` is given.
    """
    if brain is not None:
        image = np.ma.masked_array(image, mask=~brain)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="black")
    shown = axis.imshow(image.T, origin="lower", cmap=colormap, vmin=0.0, vmax=vmax)
    axis.set_title(title, fontsize=9)
    if unit is not None:
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02).set_label(unit, fontsize=8)


def plot_figure(
    entry: Mapping,
    prediction_sets: Mapping[str, str | os.PathLike],
    path: str | os.PathLike,
    slice_index: int | None = None,
) -> pathlib.Path:
    """Write a Figure-2 style PNG of one subject.

    Args:
        entry: one subject of :func:`pipeline.reports.evaluation.load_test_subjects` (needs ``t1w``,
            ``t2w``, ``flair``, ``t1_ref``, ``t2_ref``, ``mask``).
        prediction_sets: ``{model name: predictions dir}``.
        path: the PNG to write.
        slice_index: sagittal slice (index along X in RAS); default the one with the most brain.

    Returns:
        ``path``.
    """
    grid = entry[REFERENCE_KEYS["T1"]]
    mask = read_ras(entry["mask"], grid_of=grid) > 0
    if slice_index is None:
        slice_index = int(mask.sum(axis=(1, 2)).argmax())
    brain = mask[slice_index]
    columns = max(len(prediction_sets) + 1, len(WEIGHTED_TITLES))
    # a bare Figure (no pyplot): rendered by Agg, no global backend state, nothing left open.
    figure = Figure(figsize=(3.4 * columns, 2.9 * 5), layout="constrained")
    axes = figure.subplots(5, columns, squeeze=False)
    for axis in axes.flat:  # panels left empty stay blank
        axis.set_axis_off()

    for map_row, (map_name, reference_key) in enumerate(REFERENCE_KEYS.items()):
        cmap, vmax = MAP_COLORMAPS[map_name], MAP_DISPLAY_MAX_MS[map_name]
        ref = read_ras(entry[reference_key], grid_of=grid)[slice_index]
        map_axes, error_axes = axes[2 * map_row], axes[2 * map_row + 1]
        for column, (model, folder) in enumerate(prediction_sets.items()):
            pred = read_ras(prediction_path(folder, entry["subject"], map_name), grid_of=grid)[slice_index]
            _show(figure, map_axes[column], pred, f"{model}: {map_name} (ms)", cmap, vmax, "ms", brain)
            error_title = f"|{model} − reference|: {map_name} (ms)"
            error_max = ERROR_DISPLAY_MAX_MS[map_name]
            _show(figure, error_axes[column], np.abs(pred - ref), error_title, ERROR_COLORMAP, error_max, "ms", brain)
        _show(figure, map_axes[len(prediction_sets)], ref, f"reference: {map_name} (ms)", cmap, vmax, "ms", brain)

    for column, (key, title) in enumerate(WEIGHTED_TITLES.items()):
        weighted = read_ras(entry[key], grid_of=grid)[slice_index]
        top = np.percentile(weighted[brain] if brain.any() else weighted, WEIGHTED_DISPLAY_PERCENTILE)
        _show(figure, axes[4, column], weighted, f"input: {title} (a.u.)", "gray", float(top), None)

    figure.suptitle(f"{entry['subject']}, sagittal slice {slice_index} (RAS x index)")
    path = pathlib.Path(path)
    figure.savefig(path, dpi=100)
    return path
