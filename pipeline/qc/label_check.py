"""Label-resolution check: predicted 1 mm maps degraded to the geometry of a subject's low-resolution labels.

Where a subject has quantitative maps only at a coarse resolution (e.g. 1 x 1 x 3.5 mm slabs, the training
labels), the 1 mm prediction is brought to that geometry and compared with them: an accuracy figure without a
1 mm reference (the SynthSR idea: judge the high-resolution output at the resolution of what was measured).

Degradation: each label voxel averages the prediction over its footprint, a box of the label voxel's size along
each of its axes (in the label grid's own orientation, through both affines), sampled at ``samples_per_mm`` points
per mm along each axis (``scipy.ndimage.map_coordinates``, linear interpolation of the prediction; on a label grid
whose axes run along the prediction's, the usual case, the same means one axis at a time). As a fit of a
voxel's mixed signal does, proton-density-weighted relaxation *rates* are averaged (the initial slope of a
multi-exponential curve, as :mod:`pipeline.phantom.labels` models the labels):
``T_low = mean(M0) / mean(M0 / T)``. The profile is an ideal box; a real slice profile's transition bands
(cross-talk between slabs) are not modelled.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.ndimage import map_coordinates

from pipeline.data.validity import MAX_RELAXATION_MS
from pipeline.metrics import mpe

SAMPLES_PER_MM = 1.0
"""Sampling density of a label voxel's footprint, per mm and axis (at least one sample per axis)."""
MIN_BRAIN_FRACTION = 0.5
"""Label voxels whose footprint holds a smaller fraction of brain are not compared."""


def _axis_offsets(spacing_mm: np.ndarray, samples_per_mm: float) -> list[np.ndarray]:
    """Per axis: the sample positions inside one voxel, in voxel index units (centred on 0, within [-0.5, 0.5))."""
    counts = np.maximum(1, np.ceil(np.asarray(spacing_mm) * samples_per_mm - 1e-9)).astype(int)
    return [(np.arange(n) + 0.5) / n - 0.5 for n in counts]


def footprint_offsets(spacing_mm: np.ndarray, samples_per_mm: float = SAMPLES_PER_MM) -> np.ndarray:
    """(n, 3) sample positions inside one voxel, in voxel index units (centred on 0, within [-0.5, 0.5))."""
    return np.array(list(itertools.product(*_axis_offsets(spacing_mm, samples_per_mm))))


def _axis_aligned(label_to_maps: np.ndarray) -> np.ndarray | None:
    """The maps axis of each label axis when every label axis runs along one maps axis (a permutation, flips and
    scales: the usual case of slabs cut along an image axis), else None (an oblique label grid)."""
    linear = np.asarray(label_to_maps)[:3, :3]
    axes = np.argmax(np.abs(linear), axis=0)
    off_axis = linear.copy()
    off_axis[axes, range(3)] = 0.0
    if sorted(axes) != [0, 1, 2] or np.abs(off_axis).max() > 1e-9 * np.abs(linear).max():
        return None
    return axes


def _interpolation_mean_matrix(positions: np.ndarray, size: int) -> np.ndarray:
    """(n_out, size) matrix averaging, over the columns of ``positions`` (n_out, n_samples; voxel index units), the
    linear interpolation of a 1D signal of ``size`` samples; a position outside [0, size - 1] samples 0 (as
    ``map_coordinates``' constant mode does). Written by hand: scipy has no matrix form of ``map_coordinates``."""
    matrix = np.zeros((len(positions), size + 1))  # a spare column for the upper neighbour of position size - 1
    rows = np.broadcast_to(np.arange(len(positions))[:, None], positions.shape)
    within = (positions >= 0) & (positions <= size - 1)
    low = np.floor(positions[within]).astype(int)
    fraction = positions[within] - low
    np.add.at(matrix, (rows[within], low), (1.0 - fraction) / positions.shape[1])
    np.add.at(matrix, (rows[within], low + 1), fraction / positions.shape[1])
    return matrix[:, :size]


def _footprint_means(
    volumes: dict[str, np.ndarray],
    label_to_maps: np.ndarray,
    axes: np.ndarray,
    label_shape: tuple,
    offsets: list[np.ndarray],
) -> dict[str, np.ndarray]:
    """Footprint means of each volume on an axis-aligned label grid, one axis at a time: the mean of trilinear samples
    over a product of per-axis offsets is then the product of 1D means (what the point-sampling loop of
    :func:`degrade_to_label_grid` computes, faster). ``axes``: the maps axis of each label axis (:func:`_axis_aligned`)."""
    size = next(iter(volumes.values())).shape
    matrices = []
    for label_axis, maps_axis in enumerate(axes):
        centres = np.arange(label_shape[label_axis])[:, None] + offsets[label_axis][None, :]
        positions = label_to_maps[maps_axis, label_axis] * centres + label_to_maps[maps_axis, 3]
        matrix = _interpolation_mean_matrix(positions, size[maps_axis])
        identity = matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(len(matrix)))
        matrices.append(None if identity else matrix)  # a 1 mm axis sampled at its voxel centres: nothing to do
    means = {}
    for name, volume in volumes.items():
        result = np.transpose(volume, axes)  # maps axes in the order of the label axes
        for axis, matrix in ((a, m) for a, m in enumerate(matrices) if m is not None):
            result = np.moveaxis(np.tensordot(result, matrix, axes=([axis], [1])), -1, axis)
        means[name] = result
    return means


def degrade_to_label_grid(
    maps_ms: np.ndarray,
    mask: np.ndarray,
    maps_affine: np.ndarray,
    label_affine: np.ndarray,
    label_shape: tuple[int, int, int],
    samples_per_mm: float = SAMPLES_PER_MM,
    point_sampling: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The (T1, T2, M0) prediction averaged over the footprints of a label grid's voxels.

    Args:
        maps_ms: (3, X, Y, Z) T1 (ms), T2 (ms), M0 on the grid of ``maps_affine``; 0 outside the brain.
        mask: (X, Y, Z) brain mask on that grid.
        maps_affine, label_affine: 4 x 4 voxel-to-world affines (mm) of the prediction and of the labels.
        label_shape: the label grid's shape.
        samples_per_mm: footprint sampling density (:func:`footprint_offsets`).
        point_sampling: interpolate at every footprint point even where the label grid is axis-aligned with the
            prediction's (there one axis at a time gives the same means, faster).

    Returns:
        (3, *label_shape) degraded T1 (ms), T2 (ms), M0 (0 where the footprint holds no brain) and the footprint's
        brain fraction (*label_shape).
    """
    spacing = np.linalg.norm(np.asarray(label_affine)[:3, :3], axis=0)
    label_to_maps = np.linalg.inv(maps_affine) @ label_affine
    t1, t2, m0 = (np.asarray(channel, dtype=np.float64) for channel in maps_ms)
    rate = {
        name: np.divide(m0, value, out=np.zeros_like(m0), where=value > 0) for name, value in (("t1", t1), ("t2", t2))
    }
    volumes = {"m0": m0, "brain": (np.asarray(mask) != 0).astype(np.float64), **rate}
    axes = None if point_sampling else _axis_aligned(label_to_maps)
    if axes is not None:
        mean = _footprint_means(volumes, label_to_maps, axes, label_shape, _axis_offsets(spacing, samples_per_mm))
    else:
        centres = np.stack(np.meshgrid(*(np.arange(n) for n in label_shape), indexing="ij"), axis=-1).reshape(-1, 3)
        sums = {name: np.zeros(len(centres)) for name in volumes}
        offsets = footprint_offsets(spacing, samples_per_mm)
        for offset in offsets:
            points = (centres + offset) @ label_to_maps[:3, :3].T + label_to_maps[:3, 3]
            for name, volume in volumes.items():
                sums[name] += map_coordinates(volume, points.T, order=1, mode="constant", cval=0.0)
        mean = {name: (total / len(offsets)).reshape(label_shape) for name, total in sums.items()}
    m0_low = mean["m0"]
    degraded = [np.divide(m0_low, mean[name], out=np.zeros_like(m0_low), where=mean[name] > 0) for name in ("t1", "t2")]
    return np.stack([*degraded, m0_low]).astype(np.float32), mean["brain"].astype(np.float32)


def label_resolution_mpe(
    maps_ms: np.ndarray,
    mask: np.ndarray,
    maps_affine: np.ndarray,
    labels_ms: np.ndarray,
    label_affine: np.ndarray,
    samples_per_mm: float = SAMPLES_PER_MM,
) -> dict:
    """MPE (%) of the degraded T1 and T2 prediction against the labels, over footprints that are mostly brain.

    Args:
        maps_ms, mask, maps_affine: as :func:`degrade_to_label_grid`.
        labels_ms: (2, *label_shape) T1 and T2 labels (ms) on the grid of ``label_affine``; voxels where either is
            not a valid fit are left out.

    Returns:
        ``{"t1_mpe_percent": ..., "t2_mpe_percent": ..., "compared_voxels": n}``.
    """
    label_shape = tuple(labels_ms.shape[1:])
    degraded, brain = degrade_to_label_grid(maps_ms, mask, maps_affine, label_affine, label_shape, samples_per_mm)
    # failed fits (NaN/Inf, <= 0 or absurd: pipeline.data.validity) are left out, as in training
    fitted = np.isfinite(labels_ms).all(axis=0) & (labels_ms > 0).all(axis=0) & (labels_ms <= MAX_RELAXATION_MS).all(0)
    region = (brain >= MIN_BRAIN_FRACTION) & fitted
    labels_ms = np.where(fitted, labels_ms, 0.0)
    flat = (-1, 1)  # the MPE is a mean over voxels, so (N, 1) "images" give that of the whole volume
    result = {
        f"{name}_mpe_percent": mpe(
            degraded[channel].reshape(flat), labels_ms[channel].reshape(flat), region.reshape(flat)
        )
        for channel, name in enumerate(("t1", "t2"))
    }
    result["compared_voxels"] = int((region & (labels_ms[0] > 0)).sum())
    return result
