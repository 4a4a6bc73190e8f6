"""Low-resolution label maps as a thick-slab acquisition delivers them (1.0 x 1.0 x 3.5 mm by default).

Slab ``j`` along the slab axis covers ``[t j, t (j + 1))`` mm measured from the first edge of the 1 mm grid
(``t`` = slab thickness); it integrates the 1 mm voxels it overlaps, weighted by the overlap length
(:func:`slab_weights`: an exact box average, no interpolation). The label grid keeps the in-plane voxels
of the 1 mm grid and puts each slab's centre at its world position (:func:`slab_affine`).

What a low-resolution acquisition averages is signal, not relaxation times: a fit of the slab's mixed
signal sees, to first order, the proton-density-weighted mean of the relaxation *rates* (the initial slope
of a multi-exponential recovery or decay is ``sum_j M0_j R_j``). Hence, per slab,

* ``M0_low = mean(M0)`` (background voxels count as M0 = 0, as they carry no signal),
* ``T1_low = mean(M0) / mean(M0 / T1)`` and ``T2_low`` likewise (brain voxels only, as background has
  no signal), 0 where the slab holds no brain.
"""

from __future__ import annotations

import numpy as np


def slab_weights(n_voxels: int, thickness_voxels: float) -> np.ndarray:
    """Overlap fractions of thick slabs with the voxels of one axis.

    Args:
        n_voxels: number of 1 mm voxels along the axis; voxel ``i`` covers ``[i, i + 1)``.
        thickness_voxels: slab thickness in voxels (3.5 for 3.5 mm slabs on a 1 mm grid).

    Returns:
        (n_slabs, n_voxels) float64 matrix, ``n_slabs = ceil(n_voxels / thickness_voxels)``; entry
        ``(j, i)`` is the length of ``[i, i + 1)`` inside slab ``j`` over the length of slab ``j`` inside the
        grid, so each row sums to 1 (a last slab sticking out of the grid averages its covered part).
    """
    # exact overlap lengths of two sets of intervals: no library offers box resampling to a coarser grid
    n_slabs = int(np.ceil(n_voxels / thickness_voxels - 1e-9))
    slab_start = thickness_voxels * np.arange(n_slabs)[:, None]
    voxel_start = np.arange(n_voxels)[None, :]
    overlap = np.minimum(slab_start + thickness_voxels, voxel_start + 1) - np.maximum(slab_start, voxel_start)
    overlap = np.clip(overlap, 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def slab_affine(affine: np.ndarray, axis: int, thickness_voxels: float) -> np.ndarray:
    """4x4 affine of the slab grid: ``axis`` scaled by ``thickness_voxels``, slab 0 centred at its world position.

    Slab ``j``'s centre lies at voxel coordinate ``thickness_voxels * (j + 0.5) - 0.5`` of the fine grid.
    """
    index_to_fine = np.eye(4)
    index_to_fine[axis, axis] = thickness_voxels
    index_to_fine[axis, 3] = thickness_voxels / 2.0 - 0.5
    return affine @ index_to_fine


def slab_average(volume: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``volume`` averaged into slabs along ``axis`` with ``weights`` (n_slabs, n_voxels); float64."""
    return np.moveaxis(np.tensordot(weights, volume, axes=(1, axis)), 0, axis)


def acquire_low_resolution_maps(
    t1_ms: np.ndarray, t2_ms: np.ndarray, m0: np.ndarray, axis: int, thickness_voxels: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-resolution T1, T2 (ms) and M0 label maps of 1 mm maps (see the module docstring).

    Args:
        t1_ms, t2_ms, m0: (X, Y, Z) 1 mm maps, 0 outside the brain.
        axis: slab axis (2 = z, the S-I axis).
        thickness_voxels: slab thickness in 1 mm voxels.

    Returns:
        three float32 volumes with ``ceil(n / thickness_voxels)`` slabs along ``axis``.
    """
    weights = slab_weights(m0.shape[axis], thickness_voxels)
    m0_low = slab_average(m0, weights, axis)

    def pd_weighted_rate_mean(relaxation_ms: np.ndarray) -> np.ndarray:
        m0_rate = np.divide(m0, relaxation_ms, out=np.zeros_like(m0), where=relaxation_ms > 0)
        return np.divide(m0_low, slab_average(m0_rate, weights, axis), out=np.zeros_like(m0_low), where=m0_low > 0)

    return tuple(low.astype(np.float32) for low in (pd_weighted_rate_mean(t1_ms), pd_weighted_rate_mean(t2_ms), m0_low))
