"""White-matter lesions of a phantom subject: irregular, roughly ellipsoidal blobs (2-8 mm) in template space.

Lesions are drawn in deep white matter of the template (:func:`draw_lesions`) and deformed with the anatomy;
:meth:`Lesion.fraction` gives each voxel's share of a lesion from its template position, with an irregular outline
(a smooth random field on the radius).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.phantom.anatomy import TemplateAnatomy

LESION_COUNT_RANGE = (6, 12)
"""Inclusive range of the number of white-matter lesions per subject."""
LESION_DIAMETER_RANGE_MM = (2.0, 8.0)
"""Range of lesion diameters (uniform)."""
LESION_ELONGATION = 0.2
"""Relative spread of a lesion's three semi-axes around its radius."""
LESION_IRREGULARITY = 0.25
"""Relative standard deviation of a lesion's radius over its surface (smooth field, clipped at 2 sigma)."""
LESION_SHAPE_SPACING_MM = 3.0
"""Knot spacing of the field that makes lesion outlines irregular."""


@dataclass(frozen=True)
class Lesion:
    """A white-matter lesion: an irregular, roughly ellipsoidal blob in template space.

    Attributes:
        centre_mm: (3,) RAS template-space centre.
        semi_axes_mm: (3,) semi-axes.
    """

    centre_mm: np.ndarray
    semi_axes_mm: np.ndarray

    def fraction(self, position_mm: np.ndarray, shape_field: np.ndarray) -> np.ndarray:
        """Lesion fraction (0..1) at N voxels: 1 inside, 0 outside, linear over ~1 mm across the outline.

        Args:
            position_mm: (3, N) template positions of the voxels.
            shape_field: (N,) unit-variance smooth field at the voxels; the outline lies at
                ``1 + LESION_IRREGULARITY * clip(shape_field, -2, 2)`` times the ellipsoid's radius.
        """
        offset = (position_mm - self.centre_mm[:, None]) / self.semi_axes_mm[:, None]
        outline = 1.0 + LESION_IRREGULARITY * np.clip(shape_field, -2.0, 2.0)
        normalised_radius = np.sqrt(np.sum(offset**2, axis=0)) / outline
        return np.clip(0.5 + (1.0 - normalised_radius) * self.semi_axes_mm.mean(), 0.0, 1.0)

    @property
    def reach_mm(self) -> np.ndarray:
        """(3,) half-extent of the box that holds every voxel with a non-zero fraction."""
        return self.semi_axes_mm * (1.0 + 2.0 * LESION_IRREGULARITY) + 1.0


def draw_lesions(rng: np.random.Generator, anatomy: TemplateAnatomy, count: int | None = None) -> list[Lesion]:
    """Lesions in template space whose centres lie at least ``radius + 1`` mm deep inside pure white matter.

    ``count`` lesions, or a number drawn uniformly from :data:`LESION_COUNT_RANGE` if None.
    """
    sites = np.argwhere(anatomy.white_matter_depth_mm >= LESION_DIAMETER_RANGE_MM[0] / 2 + 1.0)
    site_depths = anatomy.white_matter_depth_mm[tuple(sites.T)]
    lesions = []
    if count is None:
        count = rng.integers(LESION_COUNT_RANGE[0], LESION_COUNT_RANGE[1] + 1)
    for _ in range(count):
        radius = rng.uniform(*LESION_DIAMETER_RANGE_MM) / 2.0
        semi_axes = radius * (1.0 + LESION_ELONGATION * rng.uniform(-1.0, 1.0, 3))
        deep_enough = sites[site_depths >= semi_axes.max() + 1.0]
        site = deep_enough[rng.integers(len(deep_enough))]
        centre = anatomy.grid.affine[:3, :3] @ site + anatomy.grid.affine[:3, 3]
        lesions.append(Lesion(centre.astype(np.float32), semi_axes.astype(np.float32)))
    return lesions
