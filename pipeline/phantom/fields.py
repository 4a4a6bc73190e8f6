"""Smooth random fields (deformations, receive bias, tissue texture) as tensor-product cubic B-splines.

A field is a sum of cubic B-splines on a uniform knot lattice that covers the fixed world box
:data:`FIELD_DOMAIN_MM`, with independent standard-normal coefficients. Because the lattice is tied to
world coordinates, not to an image grid, a field can be evaluated on any axis-aligned sub-grid (e.g. a
few sagittal planes) and gives exactly the values of the full grid there. MONAI's ``SmoothField``
upsamples a random low-resolution image to one fixed output grid and cannot do that, hence the
B-spline bases from ``scipy.interpolate.BSpline.design_matrix``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import BSpline

from pipeline.phantom.grid import VoxelGrid

FIELD_DOMAIN_MM = ((-130.0, 130.0), (-166.0, 130.0), (-104.0, 148.0))
"""RAS world box (mm) on which every field is defined: the MNI152 template box with a 32 mm margin."""

CUBIC_BSPLINE_MEAN_SQUARE = 151.0 / 315.0
"""Mean over a knot interval of the sum of squared uniform cubic B-splines (= the integral of B3^2):
the variance of a 1D field with unit-variance coefficients, averaged over position."""


def bspline_basis(coords_mm: np.ndarray, axis: int, spacing_mm: float) -> np.ndarray:
    """Values of the uniform cubic B-splines of one domain axis at ``coords_mm``.

    Args:
        coords_mm: (N,) world coordinates inside ``FIELD_DOMAIN_MM[axis]``.
        axis: world axis (0 = x, 1 = y, 2 = z).
        spacing_mm: knot spacing.

    Returns:
        (N, M) float32 dense matrix, M = number of B-splines covering the domain axis.
    """
    low, high = FIELD_DOMAIN_MM[axis]
    n_intervals = int(np.ceil((high - low) / spacing_mm))
    knots = low + spacing_mm * np.arange(-3, n_intervals + 4)
    return BSpline.design_matrix(np.asarray(coords_mm, dtype=float), knots, 3).toarray().astype(np.float32)


@dataclass(frozen=True)
class SmoothRandomField:
    """``F`` independent smooth random fields with unit variance (on average over position) and mean 0.

    Attributes:
        spacing_mm: knot spacing: the correlation length of the field is about this size.
        coefficients: (F, Mx, My, Mz) standard-normal B-spline coefficients.
    """

    spacing_mm: float
    coefficients: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, spacing_mm: float, n_fields: int = 1) -> SmoothRandomField:
        """Draw ``n_fields`` fields from ``rng`` (the number of draws depends only on the spacing)."""
        shape = [
            bspline_basis(np.array([low]), axis, spacing_mm).shape[1] for axis, (low, _) in enumerate(FIELD_DOMAIN_MM)
        ]
        return cls(spacing_mm, rng.standard_normal((n_fields, *shape), dtype=np.float32))

    def __call__(self, grid: VoxelGrid) -> np.ndarray:
        """The fields at the voxel centres of ``grid``: (F, X, Y, Z) float32 (a transposed view)."""
        bases = [bspline_basis(mm, axis, self.spacing_mm) for axis, mm in enumerate(grid.axes_mm())]
        # only the B-splines whose support meets the grid contribute
        support = [slice(used[0], used[-1] + 1) for used in (np.flatnonzero(basis.any(axis=0)) for basis in bases)]
        basis_x, basis_y, basis_z = (basis[:, columns] for basis, columns in zip(bases, support))
        coefficients = self.coefficients[(slice(None), *support)]
        # separable sum over the knot lattice, one matrix product per axis
        unit_variance = coefficients / np.float32(CUBIC_BSPLINE_MEAN_SQUARE**1.5)
        lattice = np.tensordot(unit_variance, basis_z, axes=(3, 1))  # (F, Mx, My, Z)
        lattice = np.tensordot(basis_x, lattice, axes=(1, 1))  # (X, F, My, Z)
        values = np.tensordot(basis_y, lattice, axes=(1, 2))  # (Y, X, F, Z)
        return values.transpose(2, 1, 0, 3)
