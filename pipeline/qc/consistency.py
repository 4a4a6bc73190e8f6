"""Self-consistency of predicted maps: do they re-synthesise the weighted images that were acquired?

Maps that are right must reproduce the acquired images through the physics of the acquisition, up to the
unknown receive gain. For each contrast ``c`` of the check (keys of :data:`pipeline.physics.SIGNAL_MODELS`, e.g.
``mprage`` and ``tse_epg``), with the protocol in force:

1. ``synthetic_c = physics.synthesize(c, T1, T2, M0)`` from the predicted maps (ms), voxel by voxel;
2. both images are smoothed by a Gaussian of ``smoothing_sigma`` voxels (``scipy.ndimage.gaussian_filter``), so
   that acquisition noise and the acquired images' point-spread functions weigh less than map errors;
3. the unknown scale is fitted per axial slice in closed form (least squares inside the brain mask,
   :meth:`pipeline.losses.ScaleInvariantL1Loss.least_squares_scale`, the loss's own fit), or as a smooth
   local field over a window of ``scale_window`` voxels;
4. ``residual_c = a * synthetic_c - acquired_c``, summarised in two dimensionless numbers, so that the same
   threshold holds for any image scale:

   * ``residual``: ``mean |residual_c| / mean acquired_c`` over the brain -- the size of the disagreement;
   * ``bias`` per tissue class ``k``: ``median_k residual_c / median_brain acquired_c`` -- the signed error of
     that tissue's re-synthesised intensity, in units of the brain's median intensity;
   * ``grey_white``: ``bias_white_matter - bias_grey_matter`` -- the error of the re-synthesised contrast between
     the two tissues. No gain changes it, and neither CSF's partial volume nor its long T1 and T2 (where the signal
     models depart most from a scanner) enter it: of the figures it is the one that exact maps keep smallest.

A global error in one map changes the contrast *between* tissues, which one scale per slice cannot absorb: with
T2 20 % too long the T2w TSE's grey and white matter brighten against CSF by ~20 %, and the fitted scale turns
that into opposite biases of CSF and white matter. Noise and point-spread functions leave the class medians
nearly unbiased but add to ``residual``, so the biases carry the sensitive signal; the residual catches gross
failures (swapped inputs). The signal models are simpler than a scanner, so even the exact maps have biases of a
few per cent: :mod:`pipeline.qc.calibration` measures them on validation subjects and flags departures from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from pipeline.losses import ScaleInvariantL1Loss
from pipeline.losses.consistency import DEFAULT_INPUT_CHANNELS
from pipeline.physics import resolve_protocol, synthesize
from pipeline.qc.tissues import TISSUE_CLASSES

INPUT_CHANNELS = DEFAULT_INPUT_CHANNELS
"""Contrast → channel of the acquired images (T1w, T2w, FLAIR) it re-synthesises (the loss's default)."""


def synthesize_volume(contrast: str, maps_ms: np.ndarray, protocol: Any = None) -> np.ndarray:
    """The weighted image of ``contrast`` from (T1 ms, T2 ms, M0) maps (3, X, Y, Z): float32 (X, Y, Z)."""
    t1, t2, m0 = (torch.as_tensor(np.asarray(channel, dtype=np.float32)) for channel in maps_ms)
    with torch.no_grad():
        return synthesize(contrast, t1, t2, m0, resolve_protocol(contrast, protocol)).numpy()


def fitted_scale(synthetic: np.ndarray, acquired: np.ndarray, mask: np.ndarray, scale_window: int = 0) -> np.ndarray:
    """Least-squares factor ``a`` per axial slice (or per ``scale_window`` neighbourhood) of ``a * synthetic ≈ acquired``.

    Args:
        synthetic, acquired: (X, Y, Z) images.
        mask: (X, Y, Z) 0/1 brain mask; only its voxels enter the fit.
        scale_window: 0: one factor per axial slice; an odd number of voxels: a local factor per in-plane window.

    Returns:
        (X, Y, Z) float32 factors (broadcast over each slice with ``scale_window = 0``).
    """

    def as_slices(volume):  # (X, Y, Z) -> (Z, 1, X, Y): axial slices as a batch of images
        return torch.as_tensor(np.asarray(volume, dtype=np.float32)).permute(2, 0, 1).unsqueeze(1)

    fit = ScaleInvariantL1Loss(window=scale_window)
    with torch.no_grad():
        scale = fit.least_squares_scale(as_slices(synthetic), as_slices(acquired), as_slices(mask != 0))
    return np.ascontiguousarray(scale.expand(-1, 1, *synthetic.shape[:2]).squeeze(1).permute(1, 2, 0).numpy())


def residual_summary(residual: np.ndarray, acquired: np.ndarray, mask: np.ndarray, tissues: np.ndarray) -> dict:
    """``{"residual": float, "bias": {tissue: float}, "grey_white": float}`` of one contrast (module docstring, step 4).

    Args:
        residual, acquired: (X, Y, Z) scaled synthetic minus acquired image, and the acquired image.
        mask: (X, Y, Z) brain mask.
        tissues: (X, Y, Z) classes of :data:`~pipeline.qc.tissues.TISSUE_CLASSES`; a class without voxels gives NaN.
    """
    inside = mask != 0
    median = float(np.median(acquired[inside]))
    bias = {
        name: float(np.median(residual[tissues == label]) / median) if (tissues == label).any() else float("nan")
        for label, name in TISSUE_CLASSES.items()
    }
    return {
        "residual": float(np.abs(residual[inside]).mean() / np.abs(acquired[inside]).mean()),
        "bias": bias,
        "grey_white": bias["white_matter"] - bias["grey_matter"],
    }


def self_consistency(
    maps_ms: np.ndarray,
    images: np.ndarray,
    mask: np.ndarray,
    tissues: np.ndarray,
    contrasts: Sequence[str] = ("mprage", "tse_epg"),
    protocols: Mapping[str, Any] | None = None,
    smoothing_sigma: float = 1.0,
    scale_window: int = 0,
) -> tuple[dict, dict]:
    """Residuals of the acquired images against those the maps re-synthesise (module docstring).

    Args:
        maps_ms: (3, X, Y, Z) predicted T1 (ms), T2 (ms), M0 (a.u.) on the images' grid.
        images: (3, X, Y, Z) acquired T1w, T2w, FLAIR (any scale each).
        mask: (X, Y, Z) brain mask.
        tissues: (X, Y, Z) classes of :func:`pipeline.qc.tissues.segment_tissues`.
        contrasts: contrasts checked (each re-synthesises channel :data:`INPUT_CHANNELS` of ``images``).
        protocols: ``{contrast: protocol dataclass or dict}`` in force; missing contrasts use the defaults.
        smoothing_sigma: Gaussian smoothing (voxels) of both images before the fit; 0: none.
        scale_window: see :func:`fitted_scale`.

    Returns:
        ``residuals``: ``{contrast: {"residual": ..., "bias": {tissue: ...}}}`` (:func:`residual_summary`), ``volumes``:
        ``{"acquired_<c>", "synthetic_<c>" (scaled), "residual_<c>"}`` float32 (X, Y, Z) arrays of each contrast.
    """
    unknown = sorted(set(contrasts) - set(INPUT_CHANNELS))
    if unknown:
        raise ValueError(
            f"self_consistency cannot check contrast(s) {unknown}; expected some of {list(INPUT_CHANNELS)}"
        )
    protocols = dict(protocols or {})
    inside = (np.asarray(mask) != 0).astype(np.float32)
    residuals, volumes = {}, {}
    for contrast in contrasts:
        synthetic = synthesize_volume(contrast, maps_ms, protocols.get(contrast))
        acquired = np.asarray(images[INPUT_CHANNELS[contrast]], dtype=np.float32)
        if smoothing_sigma > 0:
            synthetic, acquired = (gaussian_filter(x * inside, smoothing_sigma) for x in (synthetic, acquired))
        synthetic = fitted_scale(synthetic, acquired, inside, scale_window) * synthetic * inside
        acquired = acquired * inside
        residual = synthetic - acquired
        residuals[contrast] = residual_summary(residual, acquired, inside, tissues)
        volumes.update({f"acquired_{contrast}": acquired, f"synthetic_{contrast}": synthetic})
        volumes[f"residual_{contrast}"] = residual
    return residuals, volumes
