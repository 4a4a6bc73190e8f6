"""Axis-aligned voxel grids in RAS world space: the geometry every phantom volume is simulated on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid whose axes are parallel to the RAS world axes (a diagonal affine with positive spacing).

    Attributes:
        shape: number of voxels (X, Y, Z).
        affine: 4x4 voxel-index → RAS world (mm) matrix; voxel ``i`` of axis ``d`` is centred at
            ``affine[d, d] * i + affine[d, 3]`` mm.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self):
        linear = self.affine[:3, :3]
        if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
            raise ValueError(f"VoxelGrid needs an axis-aligned RAS affine with positive spacing, got\n{self.affine}")

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel size (3,) in mm."""
        return np.diag(self.affine)[:3].copy()

    def axes_mm(self) -> list[np.ndarray]:
        """World coordinates (mm) of the voxel centres along X, Y and Z: three 1D float64 arrays."""
        return [self.affine[d, d] * np.arange(n) + self.affine[d, 3] for d, n in enumerate(self.shape)]

    def coordinate_mm(self, axis: int) -> np.ndarray:
        """World coordinates (mm) along ``axis``, shaped to broadcast over the grid ((X,1,1), (1,Y,1) or (1,1,Z))."""
        return self.axes_mm()[axis].reshape([-1 if d == axis else 1 for d in range(3)])

    def world_to_index(self, axis: int, mm: np.ndarray | float) -> np.ndarray | float:
        """Fractional voxel index along ``axis`` of world coordinate(s) ``mm``."""
        return (mm - self.affine[axis, 3]) / self.affine[axis, axis]

    def subgrid(self, start: tuple[int, int, int], shape: tuple[int, int, int]) -> VoxelGrid:
        """The grid of ``shape`` voxels whose first voxel is voxel ``start`` of this grid (may lie outside it)."""
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.asarray(start, dtype=float) + self.affine[:3, 3]
        return VoxelGrid(tuple(int(n) for n in shape), affine)
