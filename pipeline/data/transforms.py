"""The volume pipeline: one manifest entry (file paths) → normalised channel-first tensors on the T1w's 1 mm grid.

Steps (each a MONAI transform):

1. load every file (float32, channel first), check it is one finite 3D volume (weighted images: not constant;
   label maps may hold NaN/Inf, and their failed fits are marked NaN, :mod:`pipeline.data.validity`), reorient to
   RAS; optionally resample the T1w to the model's voxel size (``voxel_size_mm``);
2. optionally (``register``) rigid registration of T2w, FLAIR and the label maps to the T1w; the co-registration
   check against the T1w (geometry for every file, translation registration for ``registration_keys``: with
   ``register``, the residual after registration);
3. resample T2w, FLAIR, maps, references and mask onto the T1w grid (bilinear for images and maps, which keep the
   blur of their 3.5 mm slabs; nearest for the mask); binarise the mask, or extract the brain from the T1w
   when the entry has none; check the mask is not empty; check T1/T2 maps are in ms; the labels' validity map
   ``label_failed`` (failed fits left out of the supervised term);
4. crop every volume to the mask's bounding box grown by ``crop_margin`` voxels (zero-padded where the box leaves
   the image), so the network sees the same slices whatever the field of view; optionally (``bias_correction``)
   divide each weighted image by its N4 receive-bias field (:mod:`pipeline.data.bias_field`); divide each weighted
   image and M0 map by its 99th percentile inside the mask, or (``intensity_reference`` ``"csf"``) the T1w and T2w
   by their median in the CSF (:mod:`pipeline.data.normalization`); T1/T2 from ms to network units (÷ ``MAP_UNIT_MS``, i.e. units of 3 s);
5. concatenate: ``image`` (3, X, Y, Z) = (T1w, T2w, FLAIR); ``label`` (3, X, Y, Z) = (T1, T2, M0) low-resolution
   labels and ``label_failed`` (1, X, Y, Z); ``reference`` (3, X, Y, Z) = 1 mm (T1, T2, M0); ``mask`` (1, X, Y, Z)
   float32 {0, 1}; ``subject`` is kept. ``image`` carries the T1w's meta (affine of the cropped grid,
   ``filename_or_obj``), so predictions can be written back in the T1w file's geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from monai.transforms import (
    AsDiscreted,
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ResampleToMatchd,
    Spacingd,
)

from pipeline.data.bias_field import CorrectBiasFieldd
from pipeline.data.brain_mask import BrainMaskd
from pipeline.data.checks import CheckMapUnitsd, CheckMaskd, CheckVolumed, LoadVolumesd
from pipeline.data.coregistration import CheckCoregistrationd
from pipeline.data.manifest import IMAGE_KEYS, LABEL_KEYS, MASK_KEY, REFERENCE_KEYS
from pipeline.data.normalization import intensity_normalisation
from pipeline.data.register_to_reference import RegisterToReferenced
from pipeline.data.validity import FAILED_KEY, FitFailureMapd, MarkFitFailuresd
from pipeline.physics import MAP_UNIT_MS

T1_MEDIAN_RANGE_MS = (100.0, 10000.0)
"""Plausible median of a brain T1 map in ms: a median below 100 looks like seconds, above 10000 like µs."""
T2_MEDIAN_RANGE_MS = (10.0, 5000.0)
"""Plausible median of a brain T2 map in ms."""
CROP_MARGIN = 8
"""Voxels kept around the brain mask's bounding box (8 mm on the 1 mm grid)."""


class VolumeKeys(NamedTuple):
    """The entry keys each step of the volume pipeline acts on (:func:`build_volume_transforms`'s arguments).

    Attributes:
        with_labels, with_reference, with_mask: the entries have the label maps, the 1 mm references, a ``mask``.
        label_keys: the entry keys of the (T1, T2, M0) label maps.
    """

    with_labels: bool
    with_reference: bool
    with_mask: bool
    label_keys: tuple[str, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """The label maps' keys, empty without labels."""
        return self.label_keys if self.with_labels else ()

    @property
    def map_groups(self) -> list[tuple[tuple[str, ...], str]]:
        """``(map keys in channel order (T1, T2, M0), output key)`` of each set of maps present."""
        labels = [(self.label_keys, "label")] if self.with_labels else []
        return labels + ([(REFERENCE_KEYS, "reference")] if self.with_reference else [])

    @property
    def map_keys(self) -> tuple[str, ...]:
        """Every map's key, group by group."""
        return tuple(key for group, _ in self.map_groups for key in group)

    def channel(self, index: int) -> list[str]:
        """The keys of channel ``index`` (0: T1, 1: T2, 2: M0) of every set of maps."""
        return [group[index] for group, _ in self.map_groups]

    @property
    def loaded(self) -> tuple[str, ...]:
        """Every file of an entry: the weighted images (the T1w first), the maps, the mask."""
        return IMAGE_KEYS + self.map_keys + ((MASK_KEY,) if self.with_mask else ())

    @property
    def registered(self) -> tuple[str, ...]:
        """The files registered to the T1w with ``register``: T2w, FLAIR and the first label map."""
        return ("t2w", "flair", *self.label_keys[:1]) if self.with_labels else ("t2w", "flair")


def build_volume_transforms(
    with_labels: bool = True,
    with_reference: bool = False,
    with_mask: bool = True,
    registration_keys: Sequence[str] | None = None,
    max_shift_mm: float = 2.0,
    min_overlap: float = 0.5,
    on_failure: str = "raise",
    percentile: float = 99.0,
    reader: str | None = None,
    voxel_size_mm: float | None = None,
    label_keys: Sequence[str] = LABEL_KEYS,
    crop_margin: int | None = CROP_MARGIN,
    register: bool = False,
    transform_dir: str | None = None,
    overwrite: bool = False,
    bias_correction: bool = False,
    intensity_reference: str = "brain",
) -> Compose:
    """The composed volume pipeline (see the module docstring) for entries of :func:`~pipeline.data.load_datalist`.

    Args:
        with_labels: the entries have the maps ``label_keys`` (by default the low-resolution ``t1_map``, ``t2_map``,
            ``m0_map``) → output ``label``.
        with_reference: the entries have 1 mm maps ``t1_ref``, ``t2_ref``, ``m0_ref`` → output ``reference``.
        with_mask: the entries have a ``mask``; otherwise it is derived from the T1w
            (:class:`~pipeline.data.brain_mask.BrainMaskd`: the MNI152 brain mask registered to it, refined by its
            intensities).
        registration_keys: files whose content is registered to the T1w; default ``label_keys[:1]`` with labels,
            else ``("t2w", "flair")``.
        max_shift_mm: largest tolerated residual shift of the co-registration check.
        min_overlap: smallest tolerated world-space bounding-box overlap with the T1w.
        on_failure: ``"raise"`` or ``"warn"`` on co-registration failure.
        percentile: intensity percentile inside the mask that is scaled to 1 (weighted images, M0).
        reader: MONAI image reader name (default: chosen by file extension).
        voxel_size_mm: if given, the T1w (and with it every other file) is first resampled (bilinear) to this
            isotropic voxel size: the model's grid for inputs of another resolution. ``None`` keeps the T1w's grid.
        label_keys: entry keys of the (T1, T2, M0) maps that become ``label``; ``REFERENCE_KEYS`` trains on the
            1 mm maps (the oracle of the paper experiment).
        crop_margin: voxels kept around the mask's bounding box by the crop (the output grid is always the box plus
            this margin, zero-padded beyond the image, so padding or a larger field of view leaves the network's
            input unchanged); ``None`` keeps the whole T1w grid.
        register: register T2w, FLAIR and the label maps (one transform for the three) rigidly to the T1w
            (:class:`~pipeline.data.register_to_reference.RegisterToReferenced`, Mattes mutual information) before the
            co-registration check, which then measures the residual; otherwise the check alone runs.
        transform_dir: with ``register``, the transforms are written to ``<transform_dir>/<subject>/<key>_to_t1w.tfm``.
        overwrite: replace existing ``.tfm`` files (otherwise :class:`FileExistsError`).
        bias_correction: divide each weighted image by its N4 receive-bias field inside the mask
            (:class:`~pipeline.data.bias_field.CorrectBiasFieldd`), after the crop and before the normalisation.
        intensity_reference: what the weighted images are divided by
            (:data:`~pipeline.data.normalization.INTENSITY_REFERENCES`): ``"brain"`` the ``percentile`` in the mask,
            ``"csf"`` the T1w and T2w their median in the CSF.

    Returns:
        a ``Compose`` mapping an entry dict (file paths, ``subject``) to a dict with ``image``, ``mask``,
        [``label``, ``label_failed``], [``reference``], ``subject`` (shapes and units in the module docstring).
    """
    keys = VolumeKeys(with_labels, with_reference, with_mask, tuple(label_keys))
    if registration_keys is None:
        registration_keys = keys.registered if register else (label_keys[0],) if with_labels else ("t2w", "flair")
    return Compose(
        [
            *_loading_transforms(keys, reader, voxel_size_mm),
            *([_rigid_registration(keys, transform_dir, overwrite)] if register else []),
            CheckCoregistrationd(keys.loaded, IMAGE_KEYS[0], registration_keys, max_shift_mm, min_overlap, on_failure),
            *_t1w_grid_transforms(keys),
            *_normalisation_transforms(keys, crop_margin, bias_correction, intensity_reference, percentile),
        ]
    )


def _loading_transforms(keys: VolumeKeys, reader: str | None, voxel_size_mm: float | None) -> list[MapTransform]:
    """Step 1 of the module docstring: load every file, check each, mark the labels' failed fits, reorient to RAS and
    optionally resample the T1w to ``voxel_size_mm``."""
    other_keys = [key for key in keys.loaded[len(IMAGE_KEYS) :] if key not in keys.labels]  # references, mask
    return [
        LoadVolumesd(keys.loaded, reader=reader),
        CheckVolumed(IMAGE_KEYS, allow_constant=False),
        *([CheckVolumed(other_keys)] if other_keys else []),
        *(
            [CheckVolumed(keys.labels, allow_non_finite=True), MarkFitFailuresd(keys.labels)]
            if keys.with_labels
            else []
        ),
        Orientationd(keys.loaded, axcodes="RAS", labels=None),  # labels=None: axis codes in the loaded space (RAS)
        *([Spacingd(IMAGE_KEYS[0], pixdim=voxel_size_mm, mode="bilinear")] if voxel_size_mm else []),
    ]


def _rigid_registration(keys: VolumeKeys, transform_dir: str | None, overwrite: bool) -> RegisterToReferenced:
    """Step 2's optional registration of T2w, FLAIR and the label maps (one transform for the three) to the T1w."""
    return RegisterToReferenced(
        keys.registered,
        reference_key=IMAGE_KEYS[0],
        groups={keys.label_keys[0]: list(keys.label_keys[1:])} if keys.with_labels else None,
        mask_key=MASK_KEY if keys.with_mask else None,
        transform_dir=transform_dir,
        overwrite=overwrite,
    )


def _t1w_grid_transforms(keys: VolumeKeys) -> list[MapTransform]:
    """Step 3 of the module docstring: every file onto the T1w grid, the brain mask (given or extracted) and its check,
    the maps' unit checks and the labels' validity map."""
    moved_keys = keys.loaded[1:]  # every file but the T1w goes onto the T1w grid
    unit_checks = []  # the T1 and T2 maps of every set present are in ms
    if keys.map_groups:
        unit_checks = [
            CheckMapUnitsd(keys.channel(0), T1_MEDIAN_RANGE_MS, mask_key=MASK_KEY),
            CheckMapUnitsd(keys.channel(1), T2_MEDIAN_RANGE_MS, mask_key=MASK_KEY),
        ]
    return [
        ResampleToMatchd(
            moved_keys,
            key_dst=IMAGE_KEYS[0],
            mode=["nearest" if key == MASK_KEY else "bilinear" for key in moved_keys],
            # border: the 1 mm grid reaches half a slab beyond the outermost label slab centres
            padding_mode=["zeros" if key == MASK_KEY else "border" for key in moved_keys],
        ),
        AsDiscreted(MASK_KEY, threshold=0.5) if keys.with_mask else BrainMaskd(IMAGE_KEYS[0], mask_key=MASK_KEY),
        CheckMaskd(MASK_KEY),
        *unit_checks,
        *([FitFailureMapd(keys.labels, mask_key=MASK_KEY)] if keys.with_labels else []),
    ]


def _normalisation_transforms(
    keys: VolumeKeys, crop_margin: int | None, bias_correction: bool, intensity_reference: str, percentile: float
) -> list[MapTransform]:
    """Steps 4-5 of the module docstring: crop to the mask's box, optional N4 correction, intensity normalisation,
    T1/T2 to network units, and the concatenated ``image``, ``label``, ``reference`` (the per-file keys deleted)."""
    cropped_keys = IMAGE_KEYS + keys.map_keys + (MASK_KEY,) + ((FAILED_KEY,) if keys.with_labels else ())
    # allow_smaller=False: the box is always the mask's box plus the margin, zero-padded beyond the image
    crop_options = {"margin": crop_margin, "allow_smaller": False, "start_coord_key": None, "end_coord_key": None}
    transforms = [
        *([CropForegroundd(cropped_keys, MASK_KEY, **crop_options)] if crop_margin is not None else []),
        *([CorrectBiasFieldd(IMAGE_KEYS, mask_key=MASK_KEY)] if bias_correction else []),
        *intensity_normalisation(intensity_reference, keys.channel(2), mask_key=MASK_KEY, percentile=percentile),
        ConcatItemsd(IMAGE_KEYS, "image"),
    ]
    if keys.map_groups:
        transforms += [
            NormalizeIntensityd(keys.channel(0) + keys.channel(1), subtrahend=0.0, divisor=MAP_UNIT_MS),
            *(ConcatItemsd(group, name) for group, name in keys.map_groups),
        ]
    transforms.append(DeleteItemsd(IMAGE_KEYS + LABEL_KEYS + REFERENCE_KEYS))  # also paths of maps left unused
    return transforms
