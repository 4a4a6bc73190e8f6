"""Label validity: the voxels of quantitative maps where the qMRI fit failed are left out of the supervised term.

Maps from a qMRI fit carry NaN/Inf, zeros and absurd values where the fit failed. Two transforms handle them:

1. :class:`MarkFitFailuresd`, on the maps' own grid (before resampling): a voxel is a fit failure if any of its
   (T1, T2, M0) values is non-finite, negative, above :data:`MAX_RELAXATION_MS` (T1, T2), or zero while another
   map is non-zero there (a fit that returned 0). A voxel where all three maps are 0 is background, a valid zero.
   Every map of a failed voxel is set to NaN; maps without a single valid voxel raise
   :class:`~pipeline.data.errors.InvalidInputError`.
2. :class:`FitFailureMapd`, after resampling onto the T1w grid: bilinear resampling spreads each NaN to every 1 mm
   voxel that interpolates from it, so the valid voxels are exactly those interpolated from valid label voxels only.
   It writes the failure map ``label_failed`` (1, X, Y, Z) {0, 1} (1: a failed fit; 0 elsewhere, also where a later
   crop or pad adds background, whose zero labels stay supervised), sets the failed voxels of the maps to 0, logs the
   fraction of brain voxels with valid labels, and raises :class:`~pipeline.data.errors.InvalidInputError` when no
   brain voxel is left.

NaN/Inf in a weighted image, a mask or a 1 mm reference stays an error (:class:`~pipeline.data.checks.CheckVolumed`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

from pipeline.data.errors import InvalidInputError, describe_item

MAX_RELAXATION_MS = 30000.0
"""Largest T1 or T2 (ms) a fit may return and still count as a value: ~7x CSF's T1; maps in µs fail everywhere."""
FAILED_KEY = "label_failed"
"""Key of the failure map (1, X, Y, Z) float32 {0, 1}: 1 where a label map holds a failed fit."""

logger = logging.getLogger(__name__)


class MarkFitFailuresd(MapTransform):
    """Set the fit failures of the (T1, T2, M0) maps ``keys`` (each (1, X, Y, Z), same grid; T1/T2 in ms) to NaN.

    Args:
        keys: the T1, T2 and M0 map keys, in this order.
        max_relaxation_ms: T1/T2 values above it are fit failures.
    """

    def __init__(self, keys: KeysCollection, max_relaxation_ms: float = MAX_RELAXATION_MS) -> None:
        super().__init__(keys)
        if len(self.keys) != 3:
            raise ValueError(f"MarkFitFailuresd needs the (T1, T2, M0) map keys, got {self.keys}.")
        self.max_relaxation_ms = max_relaxation_ms

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        t1, t2, m0 = (convert_to_tensor(d[key], track_meta=False) for key in self.keys)
        if not t1.shape == t2.shape == m0.shape:
            raise InvalidInputError(
                f"{describe_item(d, self.keys[0])}, {self.keys[1]} and {self.keys[2]} are not on one grid: shapes "
                f"{tuple(t1.shape)}, {tuple(t2.shape)}, {tuple(m0.shape)}"
            )
        maps = torch.cat([t1, t2, m0])
        non_zero = maps != 0
        failed = (
            ~torch.isfinite(maps).all(dim=0)
            | (maps < 0).any(dim=0)
            | (maps[:2] > self.max_relaxation_ms).any(dim=0)
            | (non_zero.any(dim=0) & ~non_zero.all(dim=0))
        )
        if not bool((non_zero.all(dim=0) & ~failed).any()):
            raise InvalidInputError(
                f"{describe_item(d, self.keys[0])}, {self.keys[1]} and {self.keys[2]}: no valid label voxel (every "
                f"voxel is background, NaN/Inf, negative, above {self.max_relaxation_ms:g} ms or 0 in one map only)"
            )
        for key in self.keys:
            d[key] = d[key].masked_fill(failed[None], float("nan"))
        return d


class FitFailureMapd(MapTransform):
    """Add ``failed_key`` (1, X, Y, Z): 1 where a map of ``keys`` is not finite; set those voxels of the maps to 0.

    Args:
        keys: the label maps (1, X, Y, Z) on the T1w grid, after :class:`MarkFitFailuresd` and resampling.
        mask_key: the brain mask (1, X, Y, Z); the valid fraction is reported inside it.
        failed_key: output key of the failure map (float32 {0, 1}, the first key's meta).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", failed_key: str = FAILED_KEY) -> None:
        super().__init__(keys)
        self.mask_key, self.failed_key = mask_key, failed_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        valid = torch.stack([torch.isfinite(convert_to_tensor(d[key], track_meta=False)) for key in self.keys]).all(0)
        brain = convert_to_tensor(d[self.mask_key], track_meta=False) > 0
        n_brain, n_valid = int(brain.sum()), int((valid & brain).sum())
        files = ", ".join(describe_item(d, key) for key in self.keys)
        if n_valid == 0:
            raise InvalidInputError(
                f"{files}: no valid label voxel in the brain (every one is NaN/Inf, negative, above "
                f"{MAX_RELAXATION_MS:g} ms, or 0 in one map only); are the maps in ms?"
            )
        if n_valid < n_brain:
            logger.info(
                f"{d.get('subject', '<unknown subject>')}: labels valid in {n_valid / n_brain:.1%} of the brain "
                f"({n_brain - n_valid} voxel(s) left out of the supervised term: failed fits)"
            )
        for key in self.keys:
            d[key] = torch.nan_to_num(d[key], nan=0.0, posinf=0.0, neginf=0.0)
        first = d[self.keys[0]]
        failed = (~valid).to(torch.float32)
        d[self.failed_key] = MetaTensor(failed, meta=dict(first.meta)) if isinstance(first, MetaTensor) else failed
        return d
