"""Co-registration check: every image must lie on the T1w in world space, and its content must match the T1w's.

Two tests, both against the reference (T1w) image:

1. geometry, for every key: the world-space bounding boxes of the voxel grids overlap (intersection / smaller box
   ≥ ``min_overlap``) and the axis codes of the affines agree (after ``Orientationd`` both are RAS unless an
   affine is more than 45° oblique to the other);
2. content, for ``registration_keys`` (e.g. the low-resolution T1 map): a quick SimpleITK translation-only
   registration (Mattes mutual information, so contrast may differ) estimates the residual shift in mm; above
   ``max_shift_mm`` the pair is misregistered.

Failures raise :class:`~pipeline.data.errors.MisregistrationError` naming the subject, both files and the shift,
or warn (:class:`~pipeline.data.errors.CoregistrationWarning`) with ``on_failure="warn"``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pipeline.data.errors import CoregistrationWarning, MisregistrationError, describe_item

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
"""NIfTI/MONAI affines map voxels to RAS world coordinates, ITK's geometry is LPS."""


def world_bounding_box(affine: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Axis-aligned world bounding box (2, 3) = (min, max) in mm of a voxel grid, voxel extents included."""
    edges = [(-0.5, size - 0.5) for size in spatial_shape]
    corners = np.array(list(itertools.product(*edges)))  # (8, 3) voxel coordinates
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def overlap_fraction(box_a: np.ndarray, box_b: np.ndarray) -> float:
    """Volume of the intersection of two (2, 3) boxes over the volume of the smaller box, in [0, 1]."""
    intersection = np.clip(np.minimum(box_a[1], box_b[1]) - np.maximum(box_a[0], box_b[0]), 0.0, None).prod()
    return float(intersection / min(np.prod(box_a[1] - box_a[0]), np.prod(box_b[1] - box_b[0])))


def geometry_problem(
    reference_affine, reference_shape: Sequence[int], affine, shape: Sequence[int], min_overlap: float = 0.5
) -> str | None:
    """Why a voxel grid (4x4 ``affine``, spatial ``shape``) does not lie on the reference grid in world space, or None.

    The world bounding boxes must overlap by ``min_overlap`` of the smaller one, and the axis codes must agree.
    """
    reference_affine, affine = np.asarray(reference_affine, dtype=np.float64), np.asarray(affine, dtype=np.float64)
    overlap = overlap_fraction(world_bounding_box(reference_affine, reference_shape), world_bounding_box(affine, shape))
    if overlap < min_overlap:
        return f"their voxel grids overlap by only {overlap:.0%} in world space (minimum {min_overlap:.0%})"
    reference_codes, codes = nib.aff2axcodes(reference_affine), nib.aff2axcodes(affine)
    if reference_codes != codes:
        return f"inconsistent orientations {''.join(reference_codes)} and {''.join(codes)}"
    return None


def to_sitk(image: MetaTensor) -> sitk.Image:
    """A SimpleITK float32 image of channel 0 of ``image`` (1, X, Y, Z) with its world geometry (RAS → LPS)."""
    array = image[0].detach().cpu().numpy().astype(np.float32)
    result = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # SimpleITK arrays are (Z, Y, X)
    affine = RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)[:3]
    spacing = np.linalg.norm(affine[:, :3], axis=0)
    result.SetSpacing(spacing.tolist())
    result.SetDirection((affine[:, :3] / spacing).flatten().tolist())
    result.SetOrigin(affine[:, 3].tolist())
    return result


def _smoothed_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` Gaussian-smoothed (σ = spacing / 2) and resampled to an isotropic ``spacing_mm`` grid."""
    size = [max(2, round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    smoothed = sitk.SmoothingRecursiveGaussian(image, spacing_mm / 2)
    return sitk.Resample(
        smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), [spacing_mm] * 3, image.GetDirection()
    )


def estimate_shift_mm(
    fixed: sitk.Image, moving: sitk.Image, spacing_mm: float = 3.0, iterations: int = 100, seed: int = 0
) -> np.ndarray:
    """Residual translation (3,) in mm (LPS) that best aligns ``moving`` to ``fixed`` by Mattes mutual information.

    Both images are smoothed and resampled to ``spacing_mm`` isotropic first; 20% of the fixed voxels are sampled
    with ``seed``, so the result is deterministic. Typically well under a second for a 1 mm head.
    """
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    registration.SetMetricSamplingPercentage(0.2, seed + 1)  # SimpleITK's seed 0 is the wall clock: not repeatable
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(
        learningRate=spacing_mm, minStep=0.01, numberOfIterations=iterations, relaxationFactor=0.7
    )
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
    transform = registration.Execute(_smoothed_grid(fixed, spacing_mm), _smoothed_grid(moving, spacing_mm))
    return np.array(transform.GetParameters())


class CheckCoregistrationd(MapTransform):
    """Check that every key is co-registered with ``reference_key`` (the T1w); see the module docstring.

    Args:
        keys: images (1, X, Y, Z) checked for world-space overlap and orientation against the reference.
        reference_key: the fixed image, the T1w.
        registration_keys: keys whose content is registered to the reference (translation only).
        max_shift_mm: largest tolerated residual shift (mm).
        min_overlap: smallest tolerated bounding-box overlap (intersection over the smaller box).
        on_failure: ``"raise"`` a :class:`MisregistrationError` or ``"warn"`` with a :class:`CoregistrationWarning`.
        seed: seed of the registration's metric sampling.
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "t1w",
        registration_keys: Sequence[str] = ("t1_map",),
        max_shift_mm: float = 2.0,
        min_overlap: float = 0.5,
        on_failure: str = "raise",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if on_failure not in ("raise", "warn"):
            raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
        self.reference_key = reference_key
        self.registration_keys = tuple(registration_keys)
        self.max_shift_mm = max_shift_mm
        self.min_overlap = min_overlap
        self.on_failure = on_failure
        self.seed = seed

    def geometry_problem(self, reference: MetaTensor, image: MetaTensor) -> str | None:
        """Why ``image``'s grid does not lie on ``reference``'s in world space, or None."""
        return geometry_problem(reference.affine, reference.shape[1:], image.affine, image.shape[1:], self.min_overlap)

    def shift_problem(self, reference: MetaTensor, image: MetaTensor) -> str | None:
        """The residual shift between the images' contents if above ``max_shift_mm``, or None."""
        # NaN: the failed fits of a label map (pipeline.data.validity) carry no signal to register
        shift_lps = estimate_shift_mm(to_sitk(reference), to_sitk(torch.nan_to_num(image)), seed=self.seed)
        shift_mm = float(np.linalg.norm(shift_lps))
        if shift_mm <= self.max_shift_mm:
            return None
        shift_ras = RAS_TO_LPS @ shift_lps
        return (
            f"residual shift {shift_mm:.1f} mm (RAS {np.array2string(shift_ras, precision=1)} mm) "
            f"exceeds {self.max_shift_mm:g} mm"
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        reference = d[self.reference_key]
        for key in self.key_iterator(d):
            if key == self.reference_key:
                continue
            problem = self.geometry_problem(reference, d[key])
            if problem is None and key in self.registration_keys:
                problem = self.shift_problem(reference, d[key])
            if problem is None:
                continue
            message = (
                f"{describe_item(d, key)} is not co-registered with {self.reference_key} file "
                f"'{reference.meta.get('filename_or_obj')}': {problem}"
            )
            if self.on_failure == "raise":
                raise MisregistrationError(message)
            warnings.warn(message, CoregistrationWarning, stacklevel=2)
        return d
