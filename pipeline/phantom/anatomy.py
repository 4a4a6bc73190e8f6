"""Anatomy of the phantom: tissue fractions and a brain mask from nilearn's MNI152 2009 templates.

nilearn ships the 1 mm MNI152 2009 T1 template with grey-matter (GM) and white-matter (WM) probability
maps and a brain mask (197 x 233 x 189 voxels, RAS, values 0..1), loadable offline. From them:

* **brain mask**: the GM+WM tissue (> 0.5) with its sulci closed (a 3 mm ball, each hemisphere on its
  own, so that the interhemispheric fissure stays open) and its ventricles filled, dilated by one voxel
  for the partial-volume rim, inside the MNI brain mask. The fissure along the falx and the MNI mask's
  margin outside the cortex are background, not CSF.
* **CSF fraction**: ``1 - GM - WM`` inside that mask (ventricles, sulci, cisterns), so that the classes
  sum to 1 in the mask.
* **deep grey matter**: the GM fraction inside a soft-edged ellipsoid around the basal ganglia and thalami,
  a class of its own (shorter T1/T2 than cortex); the rest of the GM is cortical (incl. cerebellar).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from nilearn import datasets
from scipy import ndimage

from pipeline.phantom.grid import VoxelGrid
from pipeline.phantom.tissues import COMPARTMENTS

ANATOMICAL_CLASSES = tuple(name for name in COMPARTMENTS if name != "lesion")
"""Order of the anatomical fraction volumes: the compartments of the tissue table except lesions."""

SULCUS_CLOSING_RADIUS_MM = 3
"""Radius of the ball that closes sulci (CSF between gyri) into the brain mask."""
DEEP_GREY_CENTRE_MM = (0.0, -4.0, 4.0)
"""RAS centre of the deep-grey-matter ellipsoid (between the thalami, below the lateral ventricles)."""
DEEP_GREY_SEMI_AXES_MM = (30.0, 34.0, 18.0)
"""Semi-axes of the ellipsoid: caudate head to pulvinar, putamen to putamen, excluding insula and cingulum."""
DEEP_GREY_EDGE = 0.2
"""Width of the ellipsoid's linear edge, relative to its semi-axes."""
TEMPLATE_NOISE_FRACTION = 1.5 / 255
"""Fractions below this are the uint8 templates' quantisation noise (steps of 1/255) and are set to 0."""
PURE_WHITE_MATTER = 0.9
"""WM fraction above which a voxel counts as pure white matter (lesion sites)."""


@dataclass(frozen=True)
class TemplateAnatomy:
    """Tissue fractions of the MNI152 template, cropped to the brain's bounding box (+1 voxel).

    Attributes:
        fractions: (4, X, Y, Z) float32 fractions of :data:`ANATOMICAL_CLASSES`; they sum to 1 inside the
            brain mask and are 0 outside.
        grid: the template's 1 mm RAS grid of ``fractions``.
        white_matter_depth_mm: (X, Y, Z) float32 distance (mm) of each pure-WM voxel to the nearest voxel
            that is not pure WM (0 outside pure WM): where a lesion of a given radius fits.
    """

    fractions: np.ndarray
    grid: VoxelGrid
    white_matter_depth_mm: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(X, Y, Z) bool brain mask."""
        return self.fractions.sum(0) > 0.5


def _ball(radius: int) -> np.ndarray:
    """Euclidean ball structuring element of ``radius`` voxels ((2r+1)^3 bool)."""
    return np.sum(np.square(np.mgrid[(slice(-radius, radius + 1),) * 3]), axis=0) <= radius**2


def brain_mask(grey: np.ndarray, white: np.ndarray, mni_mask: np.ndarray, midline_index: int) -> np.ndarray:
    """Brain mask hugging the GM+WM tissue, with sulci and ventricles, without the fissure or outer margin.

    Args:
        grey, white: (X, Y, Z) GM and WM probability maps (0..1).
        mni_mask: (X, Y, Z) bool MNI brain mask.
        midline_index: X index of the midsagittal plane (x = 0 mm), closed with neither hemisphere.

    Returns:
        (X, Y, Z) bool mask.
    """
    tissue = (grey + white) > 0.5
    radius = SULCUS_CLOSING_RADIUS_MM
    envelope = tissue.copy()
    for hemisphere in (np.s_[:midline_index], np.s_[midline_index + 1 :]):
        # padding keeps the closing's erosion from eating the volume's faces
        padded = np.pad(tissue[hemisphere], radius + 1)
        closed = ndimage.binary_closing(padded, structure=_ball(radius))
        envelope[hemisphere] |= closed[(slice(radius + 1, -radius - 1),) * 3]
    envelope = ndimage.binary_fill_holes(envelope)
    return ndimage.binary_dilation(envelope) & mni_mask


def deep_grey_weight(grid: VoxelGrid) -> np.ndarray:
    """(X, Y, Z) float32 weight in [0, 1]: 1 inside the deep-grey-matter ellipsoid, 0 outside, linear edge."""
    axes = [
        ((mm - centre) / semi_axis) ** 2
        for mm, centre, semi_axis in zip(grid.axes_mm(), DEEP_GREY_CENTRE_MM, DEEP_GREY_SEMI_AXES_MM)
    ]
    radius = np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    return np.clip(0.5 + (1.0 - radius) / DEEP_GREY_EDGE, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_template_anatomy() -> TemplateAnatomy:
    """The phantom's template anatomy (computed once per process, a few seconds)."""
    template = datasets.load_mni152_gm_template(resolution=1)
    grey = template.get_fdata(dtype=np.float32)
    white = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mni_mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5
    full_grid = VoxelGrid(grey.shape, template.affine)
    mask = brain_mask(grey, white, mni_mask, midline_index=round(full_grid.world_to_index(0, 0.0)))

    corners = np.argwhere(mask)
    start, stop = np.maximum(corners.min(0) - 1, 0), np.minimum(corners.max(0) + 2, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    grid = full_grid.subgrid(tuple(start), tuple(stop - start))
    grey, white, mask = grey[box], white[box], mask[box]

    deep = deep_grey_weight(grid)
    classes = {
        "white_matter": white,
        "cortical_grey_matter": grey * (1.0 - deep),
        "deep_grey_matter": grey * deep,
        "csf": np.clip(1.0 - grey - white, 0.0, 1.0),
    }
    fractions = np.stack([classes[name] for name in ANATOMICAL_CLASSES])
    fractions[fractions < TEMPLATE_NOISE_FRACTION] = 0.0
    fractions *= mask / fractions.sum(0)  # the sum is never 0: where GM and WM are noise, CSF is ~1
    pure_white = fractions[ANATOMICAL_CLASSES.index("white_matter")] > PURE_WHITE_MATTER
    depth = ndimage.distance_transform_edt(pure_white)
    return TemplateAnatomy(fractions.astype(np.float32), grid, depth.astype(np.float32))
