"""Brain extraction from the T1w: nilearn's MNI152 template registered to the subject, refined by its own intensities.

For subjects that come without a brain mask (a foreground threshold finds the head, not the brain, once the image has
a skull and scalp). Steps, all on the T1w's grid:

1. **template fit** (:class:`TemplateFit`): nilearn's skull-stripped MNI152 2009 T1 template (1 mm, loaded offline,
   cached per process) is registered to the T1w by Mattes mutual information, first with a similarity transform
   (rotation, translation, isotropic scale; initialised by the images' centres of mass), then with a full affine
   transform. Both images are smoothed and resampled to 2 mm once (:data:`REGISTRATION_SPACING_MM`), then each stage
   runs at 4 and 2 mm (:data:`SHRINK_FACTORS`); the metric only sees T1w points that map within
   :data:`METRIC_MARGIN_MM` of the template's brain (a moving-image mask), so the brain, not the head, is matched.
   The MNI brain mask and the grey-matter (GM), white-matter (WM) and CSF probability maps (CSF = brain mask - GM -
   WM) are pulled onto the T1w grid through that transform (linear interpolation):
   :meth:`TemplateFit.brain_probability`, :meth:`TemplateFit.tissue_probabilities`.
2. **intensity refinement** (:meth:`TemplateFit.brain_mask`): the warped mask (probability >= 0.5) is trusted deeper
   than :data:`BOUNDARY_BAND_MM` inside its boundary; within that band on either side of it, a voxel is brain if its
   T1w intensity lies in the brain-tissue range estimated from the subject itself (:meth:`TemplateFit.tissue_range`):
   above the midpoint between the CSF and GM medians and below the WM median plus :data:`UPPER_GAP_FACTOR` WM-GM gaps
   (medians over the voxels whose warped prior is > :data:`PRIOR_THRESHOLD` inside the warped mask). Dark CSF, bone and
   background outside the brain and bright scalp fat are so left out. The connected piece holding the trusted core is
   kept (what the band lets through beyond the skull is cut off), then closed with a ball of
   :data:`SULCUS_CLOSING_RADIUS_MM` (sulcal CSF between gyri), its holes filled (ventricles) and dilated by
   :data:`RIM_DILATION_VOXELS` voxel (the partial-volume rim outside the tissue threshold, as the phantom's masks).

Needs a T1 contrast (WM brighter than GM brighter than CSF), as an MPRAGE; the tissue medians' order is checked.
~3-6 s for a 1 mm head on 2 cores (registration 1-2 s, warping and refinement 2-3 s). The fitted transform is cached
on disk (:mod:`pipeline.cache`, ``$QMAP_HYBRID_CACHE/template_fit``) under a hash of the T1w's voxels, geometry,
the seed and the fit's settings: the pre-run validation's contrast check and the data pipeline's brain mask, and every
later command on the same T1w, share one registration.

:class:`BrainMaskd` is the MONAI dictionary transform, the counterpart of
:class:`~pipeline.data.foreground.ForegroundMaskd` for images with skull.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from nilearn import datasets
from scipy import ndimage

import pipeline
from pipeline.cache import cache_dir, cached_json
from pipeline.data.coregistration import to_sitk
from pipeline.data.errors import InvalidInputError, describe_item
from pipeline.data.registration import array_xyz, image_like, innermost_transform, mattes_mi_registration, resample_onto

REGISTRATION_SPACING_MM = 2.0
"""Both images are smoothed and resampled to this isotropic spacing once, before the pyramid (fast level set-up)."""
SHRINK_FACTORS = (2, 1)
"""Pyramid of the template registration: shrink factors of the 2 mm images (4 mm, then 2 mm)."""
SMOOTHING_SIGMAS_MM = (2.0, 0.0)
"""Gaussian smoothing (mm) at each pyramid level, on top of the resampling's."""
SAMPLING_FRACTION = 0.02
"""Fraction of the (2 mm) T1w's voxels sampled by the metric at each level (0.1 gives the same masks, 3x slower)."""
METRIC_MARGIN_MM = 8.0
"""The metric only samples T1w points that map within this margin (mm) of the template's brain mask. Without it, mutual
information can prefer to stretch the skull-stripped template over the whole head (Dice 0.80 on a realistic phantom
subject with a synthetic head); with 4-12 mm, 0.983-0.986."""
ITERATIONS = 200
"""Largest number of optimizer iterations per level and stage."""
BOUNDARY_BAND_MM = 4.0
"""Half-width (mm) of the band around the warped mask's boundary where the T1w's intensities decide."""
SULCUS_CLOSING_RADIUS_MM = 3.0
"""Radius (mm) of the ball closing sulci (dark CSF between gyri) into the mask."""
UPPER_GAP_FACTOR = 1.0
"""The tissue range ends at the WM median plus this many WM-GM gaps (scalp fat is brighter)."""
RIM_DILATION_VOXELS = 1
"""Final dilation (voxels): the partial-volume rim outside the tissue threshold's boundary."""
PRIOR_THRESHOLD = 0.9
"""Warped prior above which a voxel counts as pure GM / WM / CSF for the intensity medians."""
TISSUE_CLASSES = ("grey_matter", "white_matter", "csf")
"""Keys of :meth:`TemplateFit.tissue_probabilities`."""


@dataclass(frozen=True)
class MNI152Templates:
    """nilearn's MNI152 2009 templates (1 mm, 197 x 233 x 189 voxels) as SimpleITK float32 images (LPS geometry).

    Attributes:
        t1: skull-stripped T1 template, intensities 0..1.
        brain_mask: brain mask, {0, 1}.
        grey_matter, white_matter: tissue probability maps, 0..1.
        csf: ``clip(brain_mask - grey_matter - white_matter, 0, 1)``: the rest of the brain mask (ventricles, sulci).
    """

    t1: sitk.Image
    brain_mask: sitk.Image
    grey_matter: sitk.Image
    white_matter: sitk.Image
    csf: sitk.Image


def _nifti_to_sitk(image) -> sitk.Image:
    """A SimpleITK float32 image of a 3D nibabel image (RAS affine → LPS geometry, via ``to_sitk``)."""
    array = torch.as_tensor(image.get_fdata(dtype=np.float32))[None]
    return to_sitk(MetaTensor(array, affine=torch.as_tensor(image.affine, dtype=torch.float64)))


@functools.lru_cache(maxsize=1)
def load_mni152_templates() -> MNI152Templates:
    """The MNI152 templates shipped with nilearn (no download), loaded once per process."""
    brain_mask = datasets.load_mni152_brain_mask(resolution=1)
    grey = datasets.load_mni152_gm_template(resolution=1)
    white = datasets.load_mni152_wm_template(resolution=1)
    mask_array = (brain_mask.get_fdata(dtype=np.float32) > 0.5).astype(np.float32)
    csf = np.clip(mask_array - grey.get_fdata(dtype=np.float32) - white.get_fdata(dtype=np.float32), 0.0, 1.0)
    mask_image = _nifti_to_sitk(brain_mask)
    return MNI152Templates(
        t1=_nifti_to_sitk(datasets.load_mni152_template(resolution=1)),
        brain_mask=image_like(mask_array.astype(np.float32), mask_image),
        grey_matter=_nifti_to_sitk(grey),
        white_matter=_nifti_to_sitk(white),
        csf=image_like(csf.astype(np.float32), mask_image),
    )


def _downsampled(image: sitk.Image, spacing_mm: float = REGISTRATION_SPACING_MM) -> sitk.Image:
    """``image`` smoothed (Gaussian, σ = half the spacing change) and resampled to ``spacing_mm`` on every axis finer
    than that; same orientation and extent."""
    spacing = np.array(image.GetSpacing())
    target = np.maximum(spacing, spacing_mm)
    sigma = np.sqrt(np.maximum(target**2 - spacing**2, 0.0)) / 2.0
    if sigma.max() > 0:
        image = sitk.SmoothingRecursiveGaussian(image, np.maximum(sigma, 1e-3).tolist())
    size = [max(2, round(n * s / t)) for n, s, t in zip(image.GetSize(), spacing, target)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((target - spacing) / 2.0)  # same outer voxel edges
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        target.tolist(),
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


@functools.lru_cache(maxsize=1)
def _downsampled_template_t1() -> sitk.Image:
    """The MNI152 T1 template at :data:`REGISTRATION_SPACING_MM` (computed once per process)."""
    return _downsampled(load_mni152_templates().t1)


@functools.lru_cache(maxsize=1)
def _template_metric_region() -> sitk.Image:
    """Where the template fit's metric looks: the MNI brain mask dilated by :data:`METRIC_MARGIN_MM`, 2 mm, uint8."""
    mask = _downsampled(load_mni152_templates().brain_mask) > 0.5
    radius = max(1, round(METRIC_MARGIN_MM / REGISTRATION_SPACING_MM))
    return sitk.Cast(sitk.BinaryDilate(sitk.Cast(mask, sitk.sitkUInt8), [radius] * 3, sitk.sitkBall), sitk.sitkUInt8)


def _register(
    fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, seed: int
) -> tuple[sitk.Transform, float]:
    """One Mattes-MI stage of the template fit (pyramid :data:`SHRINK_FACTORS`); the transform and final metric."""
    registration = mattes_mi_registration(
        SHRINK_FACTORS,
        SMOOTHING_SIGMAS_MM,
        SAMPLING_FRACTION,
        seed,
        ITERATIONS,
        min_step=1e-3,
        relaxation=0.7,
        histogram_bins=32,
    )
    registration.SetMetricMovingMask(_template_metric_region())
    registration.SetInitialTransform(initial, inPlace=False)
    result = innermost_transform(registration.Execute(fixed, moving))
    return result, float(registration.GetMetricValue())


def _fit_key(t1w: sitk.Image, seed: int) -> str:
    """Hash of the T1w's voxels and geometry, the seed, the fit's settings and the package version: the same key means
    the same fit (the registration is deterministic for a seed), so its cache entry can never be stale."""
    key = hashlib.blake2b(sitk.GetArrayViewFromImage(t1w), digest_size=20)  # the voxels' buffer, not a copy
    settings = (REGISTRATION_SPACING_MM, SHRINK_FACTORS, SMOOTHING_SIGMAS_MM, SAMPLING_FRACTION, METRIC_MARGIN_MM)
    identity = (t1w.GetSize(), t1w.GetOrigin(), t1w.GetSpacing(), t1w.GetDirection(), seed, settings, ITERATIONS)
    key.update(repr((*identity, pipeline.__version__)).encode())
    return key.hexdigest()


def _affine(parameters: Sequence[float], fixed_parameters: Sequence[float]) -> sitk.AffineTransform:
    """A 3D ITK affine transform from its parameters (matrix, translation) and fixed parameters (centre)."""
    transform = sitk.AffineTransform(3)
    transform.SetFixedParameters(list(fixed_parameters))
    transform.SetParameters(list(parameters))
    return transform


class TemplateFit:
    """The MNI152 templates registered (affinely) to one subject's T1w; see the module docstring.

    Args:
        t1w: the subject's T1-weighted image (3D SimpleITK image, any grid; e.g. ``to_sitk`` of a RAS MetaTensor).
        seed: seed of the registration's metric sampling (same seed → same fit).

    Attributes:
        transform: ITK affine transform mapping T1w physical points (LPS, mm) to template points.
        metric: final Mattes mutual information of the affine stage.

    Arrays returned by the methods are float32 / bool (X, Y, Z), indexed like the T1w's voxels (``array_xyz``).
    """

    def __init__(self, t1w: sitk.Image, seed: int = 0):
        if t1w.GetDimension() != 3:
            raise ValueError(f"TemplateFit needs a 3D T1w image, got {t1w.GetDimension()}D")
        self.t1w = sitk.Cast(t1w, sitk.sitkFloat32)
        self.transform, self.metric = cached_json(
            cache_dir("template_fit") / f"{_fit_key(self.t1w, seed)}.json",
            lambda: self._fit(seed),
            encode=lambda fit: {
                "parameters": fit[0].GetParameters(),
                "fixed_parameters": fit[0].GetFixedParameters(),
                "metric": fit[1],
            },
            decode=lambda stored: (_affine(stored["parameters"], stored["fixed_parameters"]), float(stored["metric"])),
        )

    def _fit(self, seed: int) -> tuple[sitk.AffineTransform, float]:
        """The registration itself: similarity, then affine (the module docstring); the transform and metric."""
        fixed, moving = _downsampled(self.t1w), _downsampled_template_t1()
        start = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        similarity, _ = _register(fixed, moving, start, seed)
        similarity = sitk.Similarity3DTransform(similarity)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(similarity.GetCenter())
        affine.SetMatrix(similarity.GetMatrix())
        affine.SetTranslation(similarity.GetTranslation())
        transform, metric = _register(fixed, moving, affine, seed)
        return sitk.AffineTransform(transform), metric

    def warp(self, template: sitk.Image) -> np.ndarray:
        """``template`` (a template-space image) pulled onto the T1w grid (linear, 0 outside): float32 (X, Y, Z)."""
        return array_xyz(resample_onto(template, self.t1w, self.transform)).astype(np.float32)

    @functools.cached_property
    def _probabilities(self) -> dict[str, np.ndarray]:
        templates = load_mni152_templates()
        return {name: self.warp(getattr(templates, name)) for name in ("brain_mask", *TISSUE_CLASSES)}

    def brain_probability(self) -> np.ndarray:
        """The MNI brain mask on the T1w grid, float32 (X, Y, Z) in [0, 1] (linear interpolation of the {0, 1} mask)."""
        return self._probabilities["brain_mask"]

    def tissue_probabilities(self) -> dict[str, np.ndarray]:
        """The GM, WM and CSF priors on the T1w grid: :data:`TISSUE_CLASSES` → float32 (X, Y, Z) in [0, 1].

        Independent of the subject's intensities (only the registration saw them): a check of the contrast order of
        the inputs can compare image medians over the voxels each prior claims.
        """
        return {name: self._probabilities[name] for name in TISSUE_CLASSES}

    def tissue_range(self) -> tuple[float, float]:
        """(low, high) T1w intensities of brain tissue: the CSF/GM median midpoint (or GM - (WM - GM) if lower), the WM
        median plus :data:`UPPER_GAP_FACTOR` x (WM - GM) (medians over the voxels each warped prior claims).

        Raises:
            ValueError: a class has no such voxel, or grey matter is not darker than white matter.
        """
        intensities = array_xyz(self.t1w)
        inside = self.brain_probability() >= 0.5
        medians = {}
        for name, prior in self.tissue_probabilities().items():
            voxels = intensities[inside & (prior > PRIOR_THRESHOLD)]
            if voxels.size == 0:
                raise ValueError(f"no voxel of the warped mask has a {name} prior above {PRIOR_THRESHOLD}")
            medians[name] = float(np.median(voxels))
        grey, white, csf = (medians[name] for name in TISSUE_CLASSES)
        if not grey < white:
            raise ValueError(f"T1w medians of GM {grey:.4g} and WM {white:.4g} are not in T1 contrast order (GM < WM)")
        # the prior's CSF region can be mostly grey matter (a partial field of view, a poor fit): then grey matter
        # minus the WM-GM gap bounds the tissue range instead of the CSF/GM midpoint
        gap = UPPER_GAP_FACTOR * (white - grey)
        return min((csf + grey) / 2.0, grey - gap), white + gap

    @functools.cached_property
    def _brain_mask(self) -> np.ndarray:
        spacing = np.array(self.t1w.GetSpacing())
        warped = self.brain_probability() >= 0.5
        if not warped.any():
            raise ValueError("the registered template's brain mask misses the T1w grid")
        # work in the warped mask's bounding box plus room for the band, the closing and the final dilation
        margin = np.ceil((BOUNDARY_BAND_MM + SULCUS_CLOSING_RADIUS_MM) / spacing).astype(int) + 2
        corners = np.argwhere(warped)
        low, high = np.maximum(corners.min(0) - margin, 0), np.minimum(corners.max(0) + margin + 1, warped.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        warped_box, intensities = warped[box], array_xyz(self.t1w)[box]
        box_image = self.t1w[tuple(slice(int(a), int(b)) for a, b in zip(low, high))]  # SimpleITK slices (X, Y, Z)

        signed_mm = array_xyz(  # distance to the warped boundary, negative inside
            sitk.SignedMaurerDistanceMap(
                image_like(warped_box.astype(np.uint8), box_image),
                insideIsPositive=False,
                squaredDistance=False,
                useImageSpacing=True,
            )
        )
        core = signed_mm < -BOUNDARY_BAND_MM
        band = np.abs(signed_mm) <= BOUNDARY_BAND_MM
        tissue_low, tissue_high = self.tissue_range()
        candidate = core | (band & (intensities >= tissue_low) & (intensities <= tissue_high))

        labels, count = ndimage.label(candidate)  # the core is one piece: the component holding most of it
        brain = labels == np.argmax(np.bincount(labels[core], minlength=count + 1)[1:]) + 1 if count else candidate
        radius = np.maximum(1, np.rint(SULCUS_CLOSING_RADIUS_MM / spacing)).astype(int).tolist()
        closed = sitk.BinaryMorphologicalClosing(
            image_like(brain.astype(np.uint8), box_image), radius, sitk.sitkBall, 1, True
        )
        filled = array_xyz(sitk.BinaryFillhole(closed, fullyConnected=False, foregroundValue=1)) > 0
        if RIM_DILATION_VOXELS:
            filled = ndimage.binary_dilation(filled, iterations=RIM_DILATION_VOXELS)
        mask = np.zeros(warped.shape, dtype=bool)
        mask[box] = filled
        return mask

    def brain_mask(self) -> np.ndarray:
        """The refined brain mask, bool (X, Y, Z) on the T1w grid (see the module docstring)."""
        return self._brain_mask


class BrainMaskd(MapTransform):
    """Add ``mask_key`` (1, X, Y, Z) float32 {0, 1}: the :class:`TemplateFit` brain mask of ``keys`` (the T1w).

    The mask keeps the T1w's meta (affine, shape; ``filename_or_obj`` = ``"brain mask estimated from <T1w file>"``),
    so later steps treat it like a loaded mask. A fit that fails (the template misses the image, the T1w's tissue
    medians are not in T1 order) raises :class:`~pipeline.data.errors.InvalidInputError` naming the subject and file.

    Args:
        keys: the T1w key (one key; a (1, X, Y, Z) MetaTensor with a RAS affine).
        mask_key: key of the added mask.
        seed: seed of the template registration.
    """

    def __init__(
        self, keys: KeysCollection = "t1w", mask_key: str = "mask", seed: int = 0, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.seed = seed

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if not isinstance(image, MetaTensor) or image.ndim != 4 or image.shape[0] != 1:
                raise InvalidInputError(
                    f"{describe_item(d, key)}: expected a (1, X, Y, Z) MetaTensor, got shape {tuple(image.shape)}"
                )
            try:
                mask = TemplateFit(to_sitk(image), seed=self.seed).brain_mask()
            except ValueError as error:
                raise InvalidInputError(f"{describe_item(d, key)}: brain extraction failed: {error}") from error
            meta = {
                **image.meta,
                "affine": image.affine.clone(),
                "filename_or_obj": f"brain mask estimated from {image.meta.get('filename_or_obj')}",
            }
            d[self.mask_key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None], meta=meta
            )
        return d
