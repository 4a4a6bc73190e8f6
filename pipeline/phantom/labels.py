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

The realistic acquisition's ``label_acquisition`` effect makes the labels as a 2D multi-slice quantitative
sequence would: each slab sees the 1 mm voxels through a **slice profile** with transition bands (the box
convolved with a Gaussian of standard deviation :data:`SLICE_PROFILE_EDGE` times the thickness, so neighbouring
slabs overlap: cross-talk), and the fitted maps carry **fit noise** (independent, multiplicative,
:data:`FIT_NOISE_CV`) and a **per-subject bias** (one factor per map, :data:`FIT_BIAS_CV`), as a qMRI fit's
B1+/model errors give. The 1 mm references stay the exact truth.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

SLICE_PROFILE_EDGE = 0.15
"""Standard deviation of the slice profile's Gaussian edges, relative to the slab thickness (10-90 % transition
~0.4 thickness, typical of a 2D excitation with a time-bandwidth product of a few)."""
PROFILE_CUTOFF = 1e-4
"""Slice-profile weights below this are 0: the profile ends about 3.7 edge standard deviations beyond the slab."""
FIT_NOISE_CV = {"t1": 0.03, "t2": 0.04, "m0": 0.02}
"""Coefficient of variation of the multiplicative, voxel-wise noise of each fitted label map."""
FIT_BIAS_CV = 0.02
"""Coefficient of variation of each label map's per-subject bias factor."""
LABEL_STREAM = 102
"""Third entry of the seed tuple ``(seed, subject_index, LABEL_STREAM)`` of the label fit errors."""


def _integrated_erf(x: np.ndarray) -> np.ndarray:
    """An antiderivative of ``erf``: ``x erf(x) + exp(-x^2) / sqrt(pi)``."""
    return x * erf(x) + np.exp(-(x**2)) / np.sqrt(np.pi)


def slab_weights(n_voxels: int, thickness_voxels: float, edge_sigma_voxels: float = 0.0) -> np.ndarray:
    """Weights of the voxels of one axis in thick slabs.

    Args:
        n_voxels: number of 1 mm voxels along the axis; voxel ``i`` covers ``[i, i + 1)``.
        thickness_voxels: slab thickness in voxels (3.5 for 3.5 mm slabs on a 1 mm grid).
        edge_sigma_voxels: 0 for an ideal box profile; otherwise the slice profile is the box convolved with a
            Gaussian of this standard deviation and each weight is the profile's exact integral over the voxel
            (closed form through :func:`_integrated_erf`).

    Returns:
        (n_slabs, n_voxels) float64 matrix, ``n_slabs = ceil(n_voxels / thickness_voxels)``; row ``j`` holds slab
        ``j``'s weights (for the box: the length of ``[i, i + 1)`` inside the slab over the slab's length inside
        the grid), normalised to sum 1 (a last slab sticking out of the grid averages its covered part).
    """
    # exact overlap integrals of slab profiles with voxels: no library offers this resampling to a coarser grid
    n_slabs = int(np.ceil(n_voxels / thickness_voxels - 1e-9))
    slab_start = thickness_voxels * np.arange(n_slabs)[:, None]
    voxel_start = np.arange(n_voxels)[None, :]
    if edge_sigma_voxels > 0:
        # integral over [u, v] of (erf((z - a)/s) - erf((z - b)/s)) / 2, s = sigma sqrt(2), slab [a, b]
        s = edge_sigma_voxels * np.sqrt(2.0)

        def profile_integral(u):
            return (
                (_integrated_erf((u - slab_start) / s) - _integrated_erf((u - slab_start - thickness_voxels) / s))
                * s
                / 2
            )

        overlap = profile_integral(voxel_start + 1.0) - profile_integral(voxel_start)
        overlap[overlap < PROFILE_CUTOFF] = 0.0  # a real profile ends; rounding must not make far voxels count
    else:
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
    t1_ms: np.ndarray,
    t2_ms: np.ndarray,
    m0: np.ndarray,
    axis: int,
    thickness_voxels: float,
    edge_sigma_voxels: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-resolution T1, T2 (ms) and M0 label maps of 1 mm maps (see the module docstring).

    Args:
        t1_ms, t2_ms, m0: (X, Y, Z) 1 mm maps, 0 outside the brain.
        axis: slab axis (2 = z, the S-I axis).
        thickness_voxels: slab thickness in 1 mm voxels.
        edge_sigma_voxels: slice-profile edge (:func:`slab_weights`; 0: ideal box).

    Returns:
        three float32 volumes with ``ceil(n / thickness_voxels)`` slabs along ``axis``.
    """
    weights = slab_weights(m0.shape[axis], thickness_voxels, edge_sigma_voxels)
    m0_low = slab_average(m0, weights, axis)

    def pd_weighted_rate_mean(relaxation_ms: np.ndarray) -> np.ndarray:
        m0_rate = np.divide(m0, relaxation_ms, out=np.zeros_like(m0), where=relaxation_ms > 0)
        return np.divide(m0_low, slab_average(m0_rate, weights, axis), out=np.zeros_like(m0_low), where=m0_low > 0)

    return tuple(low.astype(np.float32) for low in (pd_weighted_rate_mean(t1_ms), pd_weighted_rate_mean(t2_ms), m0_low))


def add_fit_errors(
    labels: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int, subject_index: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2, M0 labels with fit noise and a per-subject bias (module docstring), drawn from
    ``default_rng((seed, subject_index, LABEL_STREAM))``; voxels without brain (0) stay 0.

    Returns:
        three float32 volumes: ``label * bias * (1 + cv * noise)``, kept positive where the label is.
    """
    rng = np.random.default_rng((seed, subject_index, LABEL_STREAM))
    noisy = []
    for label, cv in zip(labels, FIT_NOISE_CV.values()):
        bias = 1.0 + FIT_BIAS_CV * rng.standard_normal()
        factor = np.clip(bias * (1.0 + cv * rng.standard_normal(label.shape)), 0.5, None)
        noisy.append((label * factor).astype(np.float32))
    return tuple(noisy)
