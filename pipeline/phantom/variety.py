"""Anatomical variety: subjects that differ by more than a small deformation of one brain.

The phantom's only anatomy is the MNI152 average. Without variety, every subject is that brain under a smooth
+-1.5 mm deformation, so a network can learn the brain instead of the physics. With variety (the realistic
acquisition's ``anatomical_variety`` effect) each subject also gets, drawn from its own random stream
(:data:`VARIETY_STREAM`, so the ideal study's draws are unchanged):

* **head pose**: rotation (:data:`ROTATION_DEG` about each axis) and translation (:data:`TRANSLATION_MM`);
* **global scaling** (:data:`GLOBAL_SCALE_RANGE`, isotropic, times +-:data:`AXIS_SCALE_SPREAD` per axis) and
  **regional scaling** (a smooth log-scale field, :data:`REGIONAL_SCALE_STD`): about +-10 % in all;
* **large nonlinear deformations**: the subject's displacement field times :data:`DEFORMATION_FACTOR`;
* **atrophy**: ventricles enlarged by contracting the template around them (:data:`VENTRICLE_CENTRE_MM`,
  :data:`VENTRICLE_EXPANSION_RANGE`), and cortical thinning: an offset on the cortical grey-matter
  probability before the fine anatomy's boundary sharpening (:data:`CORTICAL_OFFSET_RANGE`);
* **lesion load**: up to :data:`EXTRA_LESIONS_MAX` lesions more;
* **an unseen brain**: validation and test subjects image the left-right mirrored template (the MNI average is
  not symmetric in its folding), training subjects the template itself, so no held-out brain is a training
  brain under another deformation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from pipeline.phantom.fields import SmoothRandomField
from pipeline.phantom.grid import VoxelGrid

VARIETY_STREAM = 101
"""Third entry of the seed tuple ``(seed, subject_index, VARIETY_STREAM)`` of the variety draws."""
ROTATION_DEG = 6.0
"""Head rotation about each axis: uniform in +-this."""
TRANSLATION_MM = 3.0
"""Head translation along each axis: uniform in +-this."""
GLOBAL_SCALE_RANGE = (0.88, 1.04)
"""Isotropic brain scale factor: uniform in this range (centred below 1: the MNI152 brain, registered to a
Talairach-scaled space, is larger than most native brains)."""
AXIS_SCALE_SPREAD = 0.02
"""Per-axis scale factors: the isotropic one times uniform 1 +- this."""
REGIONAL_SCALE_STD = 0.03
"""Standard deviation of the smooth log-scale field (regional scaling about the brain centre)."""
REGIONAL_SCALE_SPACING_MM = 48.0
"""Knot spacing of the regional-scale field."""
DEFORMATION_FACTOR = 2.0
"""The subject's smooth displacement field is scaled by this (standard deviation 3 mm instead of 1.5 mm)."""
BRAIN_CENTRE_MM = np.array([0.0, -18.0, 18.0])
"""RAS centre of the template brain: the centre of rotation and scaling."""
VENTRICLE_CENTRE_MM = np.array([0.0, -10.0, 16.0])
"""RAS centre of the lateral ventricles in the template."""
VENTRICLE_RADIUS_MM = 22.0
"""Gaussian radius of the region contracted around the ventricles."""
VENTRICLE_EXPANSION_RANGE = (0.0, 0.25)
"""Fraction by which template positions near the ventricle centre are pulled towards it (enlarged ventricles)."""
CORTICAL_OFFSET_RANGE = (-0.12, 0.03)
"""Offset on the cortical grey-matter probability before boundary sharpening (negative: thinner cortex)."""
EXTRA_LESIONS_MAX = 20
"""Lesions added to the subject's own: uniform 0 .. this many."""


@dataclass(frozen=True)
class AnatomicalVariety:
    """One subject's draws (see the module docstring).

    Attributes:
        rotation: (3, 3) head rotation (subject = R (template - centre) + centre + translation).
        translation_mm: (3,) head translation.
        scale: (3,) global scale factor per axis.
        regional_scale: 1 smooth unit-variance field (log of the regional scale over :data:`REGIONAL_SCALE_STD`).
        ventricle_expansion: fraction of :data:`VENTRICLE_EXPANSION_RANGE`.
        cortical_offset: offset of :data:`CORTICAL_OFFSET_RANGE`.
        extra_lesion_count: lesions to add.
        mirrored: image the left-right mirrored template (validation and test subjects).
    """

    rotation: np.ndarray
    translation_mm: np.ndarray
    scale: np.ndarray
    regional_scale: SmoothRandomField
    ventricle_expansion: float
    cortical_offset: float
    extra_lesion_count: int
    mirrored: bool

    @classmethod
    def draw(cls, seed: int, subject_index: int, held_out: bool) -> AnatomicalVariety:
        """Draw from ``numpy.random.default_rng((seed, subject_index, VARIETY_STREAM))``; ``held_out``: mirrored."""
        rng = np.random.default_rng((seed, subject_index, VARIETY_STREAM))
        rotation = Rotation.from_euler("xyz", rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3), degrees=True).as_matrix()
        return cls(
            rotation=rotation,
            translation_mm=rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3),
            scale=rng.uniform(*GLOBAL_SCALE_RANGE) * rng.uniform(1 - AXIS_SCALE_SPREAD, 1 + AXIS_SCALE_SPREAD, 3),
            regional_scale=SmoothRandomField.draw(rng, REGIONAL_SCALE_SPACING_MM, 1),
            ventricle_expansion=float(rng.uniform(*VENTRICLE_EXPANSION_RANGE)),
            cortical_offset=float(rng.uniform(*CORTICAL_OFFSET_RANGE)),
            extra_lesion_count=int(rng.integers(0, EXTRA_LESIONS_MAX + 1)),
            mirrored=held_out,
        )

    def template_positions(self, grid: VoxelGrid, positions_mm: np.ndarray) -> np.ndarray:
        """Map subject-space positions (after the subject's own deformation) to template positions.

        Undoes pose, global and regional scaling, then contracts around the ventricles and mirrors if held out.

        Args:
            grid: the grid the positions belong to (for the regional-scale field).
            positions_mm: (3, X, Y, Z) positions.

        Returns:
            (3, X, Y, Z) float32 template positions.
        """
        shape = positions_mm.shape
        centre = BRAIN_CENTRE_MM[:, None]
        points = positions_mm.reshape(3, -1).astype(np.float64)
        points = self.rotation.T @ (points - centre - self.translation_mm[:, None]) + centre
        regional = np.exp(-REGIONAL_SCALE_STD * self.regional_scale(grid)[0].reshape(-1))
        points = centre + (points - centre) * regional / self.scale[:, None]
        offset = points - VENTRICLE_CENTRE_MM[:, None]
        pull = self.ventricle_expansion * np.exp(-np.sum(offset**2, axis=0) / (2 * VENTRICLE_RADIUS_MM**2))
        points = VENTRICLE_CENTRE_MM[:, None] + offset * (1.0 - pull)
        if self.mirrored:
            points[0] = -points[0]
        return points.reshape(shape).astype(np.float32)
