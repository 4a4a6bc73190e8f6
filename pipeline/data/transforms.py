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

from monai.transforms import (
    AsDiscreted,
    Compose,
    ConcatItemsd,
    CropForegroundd,
    DeleteItemsd,
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
    # (maps, output key) per present group; each group's maps are in channel order (T1, T2, M0)
    map_groups = ([(tuple(label_keys), "label")] if with_labels else []) + (
        [(REFERENCE_KEYS, "reference")] if with_reference else []
    )
    t1_keys, t2_keys, m0_keys = ([keys[channel] for keys, _ in map_groups] for channel in range(3))
    map_keys = tuple(key for keys, _ in map_groups for key in keys)
    loaded_keys = IMAGE_KEYS + map_keys + ((MASK_KEY,) if with_mask else ())
    moved_keys = loaded_keys[1:]  # every file but the T1w goes onto the T1w grid
    registered = ("t2w", "flair", *label_keys[:1]) if with_labels else ("t2w", "flair")
    if registration_keys is None:
        registration_keys = registered if register else (label_keys[0],) if with_labels else ("t2w", "flair")
    registration = RegisterToReferenced(
        registered,
        reference_key=IMAGE_KEYS[0],
        groups={label_keys[0]: list(label_keys[1:])} if with_labels else None,
        mask_key=MASK_KEY if with_mask else None,
        transform_dir=transform_dir,
        overwrite=overwrite,
    )
    label_group = tuple(label_keys) if with_labels else ()
    other_keys = [key for key in loaded_keys[len(IMAGE_KEYS) :] if key not in label_group]  # references, mask
    cropped_keys = IMAGE_KEYS + map_keys + (MASK_KEY,) + ((FAILED_KEY,) if with_labels else ())
    # allow_smaller=False: the box is always the mask's box plus the margin, zero-padded beyond the image
    crop_options = {"margin": crop_margin, "allow_smaller": False, "start_coord_key": None, "end_coord_key": None}
    crop = [CropForegroundd(cropped_keys, MASK_KEY, **crop_options)] if crop_margin is not None else []
    transforms = [
        LoadVolumesd(loaded_keys, reader=reader),
        CheckVolumed(IMAGE_KEYS, allow_constant=False),
        *([CheckVolumed(other_keys)] if other_keys else []),
        *([CheckVolumed(label_group, allow_non_finite=True), MarkFitFailuresd(label_group)] if with_labels else []),
        Orientationd(loaded_keys, axcodes="RAS", labels=None),  # labels=None: axis codes in the loaded space (RAS)
        *([Spacingd(IMAGE_KEYS[0], pixdim=voxel_size_mm, mode="bilinear")] if voxel_size_mm else []),
        *([registration] if register else []),
        CheckCoregistrationd(
            loaded_keys,
            reference_key=IMAGE_KEYS[0],
            registration_keys=registration_keys,
            max_shift_mm=max_shift_mm,
            min_overlap=min_overlap,
            on_failure=on_failure,
        ),
        ResampleToMatchd(
            moved_keys,
            key_dst=IMAGE_KEYS[0],
            mode=["nearest" if key == MASK_KEY else "bilinear" for key in moved_keys],
            # border: the 1 mm grid reaches half a slab beyond the outermost label slab centres
            padding_mode=["zeros" if key == MASK_KEY else "border" for key in moved_keys],
        ),
        AsDiscreted(MASK_KEY, threshold=0.5) if with_mask else BrainMaskd(IMAGE_KEYS[0], mask_key=MASK_KEY),
        CheckMaskd(MASK_KEY),
        *(
            [
                CheckMapUnitsd(t1_keys, T1_MEDIAN_RANGE_MS, mask_key=MASK_KEY),
                CheckMapUnitsd(t2_keys, T2_MEDIAN_RANGE_MS, mask_key=MASK_KEY),
            ]
            if map_groups
            else []
        ),
        *([FitFailureMapd(label_group, mask_key=MASK_KEY)] if with_labels else []),
        *crop,
        *([CorrectBiasFieldd(IMAGE_KEYS, mask_key=MASK_KEY)] if bias_correction else []),
        *intensity_normalisation(intensity_reference, m0_keys, mask_key=MASK_KEY, percentile=percentile),
        ConcatItemsd(IMAGE_KEYS, "image"),
    ]
    if map_groups:
        transforms += [
            NormalizeIntensityd(t1_keys + t2_keys, subtrahend=0.0, divisor=MAP_UNIT_MS),
            *(ConcatItemsd(keys, name) for keys, name in map_groups),
        ]
    transforms.append(DeleteItemsd(IMAGE_KEYS + LABEL_KEYS + REFERENCE_KEYS))  # also paths of maps left unused
    return Compose(transforms)
