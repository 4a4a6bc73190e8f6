"""A synthetic head around the phantom's brain: outer CSF, skull, scalp and neck, for testing brain extraction.

The phantom images only the brain (everything outside its mask is noise), so any foreground threshold finds the
brain. This test/fixture utility wraps the weighted images of a phantom subject in the layers a real head adds,
measured by the distance ``d`` (mm) from the brain mask (Euclidean distance transform with the voxel spacing):

=====================  ==============================  =================================================
layer                  extent (mean, mm from brain)    intensity (T1w, T2w, FLAIR)
=====================  ==============================  =================================================
outer CSF              0 .. 2                          the phantom's own CSF signal (dark, bright, nulled)
skull (compact bone)   2 .. 7                          ~0 (ultrashort T2*): a dark shell
scalp (fat, galea)     7 .. 12                         1.3, 1.0, 0.9 x nominal white matter
neck (muscle, cord)    below the brain stem            0.7, 0.6, 0.6 x nominal white matter
=====================  ==============================  =================================================

The neck is what makes the head one piece, as on a scanner: the skull is open at the foramen magnum. Below the brain's
lowest voxel (the brain stem's cut end), soft tissue replaces the shells in every voxel within :data:`NECK_RADIUS_MM`
(in the axial plane) of the brain stem's footprint (its lowest :data:`NECK_FOOTPRINT_MM`); it touches the brain stem's
end and the scalp wrapped under the cerebellum (so a threshold's largest component is the whole head), and the brain
mask ends at the cut, as brain masks end at the foramen magnum.

Each boundary moves by a smooth random field (standard deviation :data:`THICKNESS_JITTER_MM`, correlation length
:data:`THICKNESS_FIELD_SPACING_MM`), layers meet with a linear partial-volume ramp one voxel wide, and every voxel
outside the brain mask is re-imaged as ``|signal + noise|`` with complex Gaussian noise of the images' own
``noise_sigma`` (Rician magnitude, as the phantom's background). Voxels inside the brain mask are unchanged. The
grid is padded (origin shifted) where the head would not fit in it. The simplified signal models of
:mod:`pipeline.physics` do not cover bone (ultrashort T2*) or fat (J-coupling in TSE trains), so skull and scalp
take fixed multiples of :data:`~pipeline.phantom.contrasts.WHITE_MATTER_INTENSITY` instead; CSF goes through
:func:`~pipeline.phantom.contrasts.signed_signal`. Simplifications: no diploë, no eyes or face (the head's outline
follows the brain's). Deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.phantom.contrasts import CONTRASTS, WHITE_MATTER_INTENSITY, signed_signal
from pipeline.phantom.subject_files import WEIGHTED_FILES
from pipeline.phantom.tissues import TISSUES_3T

LAYER_BOUNDARIES_MM = (2.0, 7.0, 12.0)
"""Mean outer boundaries (mm from the brain mask) of outer CSF, skull and scalp."""
THICKNESS_JITTER_MM = 0.7
"""Standard deviation of the smooth displacement of each layer boundary (mm)."""
THICKNESS_FIELD_SPACING_MM = 24.0
"""Correlation length of the boundary displacements (mm)."""
NECK_FOOTPRINT_MM = 3.0
"""The neck is centred on the brain's lowest this many mm (the brain stem's cut end)."""
NECK_RADIUS_MM = 30.0
"""In-plane distance (mm) from the brain stem's footprint that the neck reaches."""
RELATIVE_INTENSITY = {
    "skull": {"mprage": 0.03, "tse": 0.02, "flair": 0.02},
    "scalp": {"mprage": 1.3, "tse": 1.0, "flair": 0.9},
    "neck": {"mprage": 0.7, "tse": 0.6, "flair": 0.6},
}
"""Skull, scalp and neck intensities as multiples of nominal white matter, per contrast."""


@dataclass(frozen=True)
class SyntheticHead:
    """Weighted images with a synthetic head, on a grid padded to hold it.

    Attributes:
        images: same keys as the input, float32 (X', Y', Z') magnitude images.
        brain_mask: (X', Y', Z') bool brain mask (the input mask, padded with False).
        head_mask: (X', Y', Z') bool voxels inside the scalp's outer surface or in the neck (brain included).
        affine: 4x4 voxel → RAS (mm) matrix of the padded grid.
        padding: (3, 2) voxels added before and after each axis of the input grid.
    """

    images: dict[str, np.ndarray]
    brain_mask: np.ndarray
    head_mask: np.ndarray
    affine: np.ndarray
    padding: np.ndarray


def _layer_signals(contrast: str) -> np.ndarray:
    """(4,) signed signals of outer CSF, skull, scalp and neck in ``contrast`` (image units, nominal WM = 1000)."""
    csf = TISSUES_3T["csf"]
    csf_signal = float(signed_signal(contrast, np.float32(csf.t1_ms), np.float32(csf.t2_ms), np.float32(csf.pd)))
    others = [WHITE_MATTER_INTENSITY * RELATIVE_INTENSITY[layer][contrast] for layer in ("skull", "scalp", "neck")]
    return np.array([csf_signal, *others], dtype=np.float32)


def _neck_fraction(brain: np.ndarray, affine: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """(X, Y, Z) float32 fraction of neck tissue (see the module docstring), 0 inside the brain."""
    axis = int(np.argmax(np.abs(affine[2, :3])))  # the voxel axis closest to world S-I
    inferior_first = affine[2, axis] > 0  # index 0 is the inferior end
    indices = np.flatnonzero(np.moveaxis(brain, axis, 0).reshape(brain.shape[axis], -1).any(axis=1))
    stem_voxels = int(np.rint(NECK_FOOTPRINT_MM / spacing_mm[axis]))
    if inferior_first:
        levels, stem = slice(0, indices[0]), slice(indices[0], indices[0] + stem_voxels + 1)
    else:
        levels, stem = slice(indices[-1] + 1, brain.shape[axis]), slice(indices[-1] - stem_voxels, indices[-1] + 1)
    footprint = np.moveaxis(brain, axis, 0)[stem].any(axis=0)
    in_plane = np.delete(spacing_mm, axis)
    distance = ndimage.distance_transform_edt(~footprint, sampling=in_plane)
    disc = np.clip((NECK_RADIUS_MM - distance) / in_plane.min() + 0.5, 0.0, 1.0).astype(np.float32)
    neck = np.zeros(np.moveaxis(brain, axis, 0).shape, dtype=np.float32)
    neck[levels] = disc
    return np.where(brain, 0.0, np.moveaxis(neck, 0, axis)).astype(np.float32)


def _smooth_field(shape: tuple[int, ...], spacing_mm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(X, Y, Z) float32 smooth random field of unit standard deviation, correlation length ~ the field spacing.

    Standard-normal values on a lattice of :data:`THICKNESS_FIELD_SPACING_MM`, cubic-spline interpolated one axis
    at a time (each axis's interpolation is a matrix: ``ndimage.zoom`` of an identity).
    """
    step = np.maximum(1, np.round(THICKNESS_FIELD_SPACING_MM / spacing_mm)).astype(int)
    coarse_shape = [int(np.ceil(n / s)) + 3 for n, s in zip(shape, step)]
    field = rng.standard_normal(coarse_shape)
    for axis, (n, s, m) in enumerate(zip(shape, step, coarse_shape)):
        interpolation = ndimage.zoom(np.eye(m), (s, 1), order=3)[:n]  # (n, m)
        field = np.moveaxis(np.tensordot(interpolation, field, axes=(1, axis)), 0, axis)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def add_synthetic_head(
    images: Mapping[str, np.ndarray],
    brain_mask: np.ndarray,
    affine: np.ndarray,
    noise_sigma: float,
    seed: int = 0,
) -> SyntheticHead:
    """Wrap a phantom subject's weighted images in outer CSF, skull, scalp and a neck (see the module docstring).

    Args:
        images: weighted images (X, Y, Z) keyed by contrast (``"mprage"``, ``"tse"``, ``"flair"``) or by manifest
            key (``"t1w"``, ``"t2w"``, ``"flair"``), intensities with nominal white matter = 1000.
        brain_mask: (X, Y, Z) bool brain mask of the images.
        affine: 4x4 voxel → RAS (mm) matrix of the images (voxel spacing = its column norms; the neck goes towards
            world inferior).
        noise_sigma: standard deviation of the Gaussian noise per real/imaginary channel (``phantom.json``
            ``noise_sigma``).
        seed: seed of the boundary displacements and of the noise.

    Returns:
        the :class:`SyntheticHead`.
    """
    contrasts = {key: WEIGHTED_FILES.get(key, key) for key in images}
    unknown = sorted(key for key, contrast in contrasts.items() if contrast not in CONTRASTS)
    if unknown:
        raise ValueError(f"images must be keyed by {CONTRASTS} or {tuple(WEIGHTED_FILES)}, got {unknown}")
    brain_mask = np.asarray(brain_mask, dtype=bool)
    if not brain_mask.any():
        raise ValueError("brain_mask is empty")
    affine = np.asarray(affine, dtype=np.float64)
    spacing_mm = np.linalg.norm(affine[:3, :3], axis=0)

    # pad where the outermost boundary (plus three jitter standard deviations and a voxel) leaves the grid
    reach = np.ceil((LAYER_BOUNDARIES_MM[-1] + 3 * THICKNESS_JITTER_MM) / spacing_mm).astype(int) + 1
    corners = np.argwhere(brain_mask)
    before = np.maximum(0, reach - corners.min(0))
    after = np.maximum(0, corners.max(0) + reach - (np.array(brain_mask.shape) - 1))
    padding = np.stack([before, after], axis=1)
    brain = np.pad(brain_mask, padding)
    padded_affine = affine.copy()
    padded_affine[:3, 3] = affine[:3, :3] @ -before + affine[:3, 3]

    rng = np.random.default_rng(seed)
    distance = ndimage.distance_transform_edt(~brain, sampling=spacing_mm).astype(np.float32)
    fractions = []  # per layer, the fraction of each voxel inside it (linear ramp one voxel wide at each boundary)
    inner = np.zeros_like(distance)
    ramp = np.float32(spacing_mm.min())
    for boundary in LAYER_BOUNDARIES_MM:
        outer = boundary + THICKNESS_JITTER_MM * _smooth_field(brain.shape, spacing_mm, rng)
        inside_outer = np.clip((outer - distance) / ramp + 0.5, 0.0, 1.0)
        inside_inner = np.clip((inner - distance) / ramp + 0.5, 0.0, 1.0) if fractions else 0.0
        fractions.append(np.clip(inside_outer - inside_inner, 0.0, 1.0))
        inner = outer
    neck = _neck_fraction(brain, padded_affine, spacing_mm)
    head = np.stack([*(fraction * (1.0 - neck) for fraction in fractions), neck])  # (4, X', Y', Z')

    result = {}
    for key, image in images.items():
        signal = np.tensordot(_layer_signals(contrasts[key]), head, axes=1)
        noise = rng.standard_normal((2, *brain.shape), dtype=np.float32) * np.float32(noise_sigma)
        magnitude = np.hypot(signal + noise[0], noise[1])
        result[key] = np.where(brain, np.pad(np.asarray(image, dtype=np.float32), padding), magnitude)
    head_mask = brain | (distance <= inner) | (neck >= 0.5)
    return SyntheticHead(result, brain, head_mask, padded_affine, padding)
