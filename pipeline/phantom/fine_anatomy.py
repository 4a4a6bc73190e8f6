"""The realistic acquisition's fine anatomy: tissues simulated on a grid of half the voxel size, with sharp boundaries.

:func:`fine_grid` splits each acquired (1 mm) voxel into 2x2x2 fine voxels; smooth 1 mm volumes are interpolated onto
it (:func:`upsample`), tissue boundaries are sharpened there (:func:`sharpen`), and the acquired grid's fractions (the
truth's) are the fine fractions' block means (:func:`block_mean`, :func:`acquired_fractions`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.phantom.acquisition import BOUNDARY_TEMPERATURE
from pipeline.phantom.grid import VoxelGrid


def fine_grid(grid: VoxelGrid) -> VoxelGrid:
    """The grid of half the voxel size over the same field of view: voxels ``2i, 2i + 1`` split voxel ``i``."""
    affine = grid.affine.copy()
    affine[:3, :3] /= 2.0
    affine[:3, 3] -= grid.spacing_mm / 4.0
    return VoxelGrid(tuple(2 * n for n in grid.shape), affine)


def block_mean(volumes: np.ndarray) -> np.ndarray:
    """(..., X, Y, Z) float32 means of the 2x2x2 blocks of (..., 2X, 2Y, 2Z) ``volumes`` (fine → acquired grid)."""
    *leading, x, y, z = volumes.shape
    blocks = volumes.reshape(*leading, x // 2, 2, y // 2, 2, z // 2, 2)
    return blocks.mean(axis=(-5, -3, -1), dtype=np.float32)


def sharpen(probabilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Tissue fractions with sharp boundaries: class softmax of ``(probability + offset) / BOUNDARY_TEMPERATURE``.

    Args:
        probabilities: (C, N) template tissue probabilities at N brain voxels.
        offsets: (C,) subject offsets that move the boundaries (0: at the probabilities' crossings).

    Returns:
        (C, N) float32 fractions summing to 1.
    """
    logits = (
        torch.as_tensor(probabilities) + torch.as_tensor(offsets, dtype=torch.float32)[:, None]
    ) / BOUNDARY_TEMPERATURE
    return torch.softmax(logits, dim=0).numpy()


def upsample(volumes: np.ndarray) -> np.ndarray:
    """(C, 2X, 2Y, 2Z) float32 trilinear interpolation of smooth (C, X, Y, Z) ``volumes`` onto :func:`fine_grid`.

    PyTorch's half-pixel convention (``align_corners=False``) puts fine voxels ``2i, 2i + 1`` a quarter voxel before
    and after voxel ``i``, as :func:`fine_grid` does; the outermost fine voxels take the edge value.
    """
    fine = F.interpolate(torch.as_tensor(volumes)[None], scale_factor=2, mode="trilinear", align_corners=False)
    return fine[0].numpy()


def acquired_fractions(
    simulated_mask: np.ndarray, simulated_fractions: np.ndarray, fine: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The acquired (1 mm) grid's brain mask (X, Y, Z) and (K, N) compartment fractions at its N voxels (the truth's).

    Args:
        simulated_mask, simulated_fractions: the simulated grid's mask and (K, *shape) fractions (0 outside it).
        fine: the simulated grid is the fine grid (:func:`fine_grid`): the 1 mm fractions are its block means.
    """
    if not fine:
        return simulated_mask, simulated_fractions[:, simulated_mask]
    coarse = block_mean(simulated_fractions)
    mask = block_mean(simulated_mask.astype(np.float32)) >= 0.5
    return mask, coarse[:, mask] / coarse[:, mask].sum(0)
