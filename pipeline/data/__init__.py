"""Manifests and MONAI transforms from NIfTI subjects to normalised volumes and 2D slices.

* :mod:`~pipeline.data.manifest`: read / validate decathlon manifests, regenerate the default phantom study;
* :mod:`~pipeline.data.checks`, :mod:`~pipeline.data.coregistration`: input-validation transforms;
* :mod:`~pipeline.data.foreground`, :mod:`~pipeline.data.normalization`: masks and intensity scaling;
* :mod:`~pipeline.data.transforms`: the composed volume pipeline;
* :mod:`~pipeline.data.slices`, :mod:`~pipeline.data.datasets`: cached volumes → slice datasets.
"""

from pipeline.data.checks import CheckMapUnitsd, CheckMaskd, CheckVolumed, LoadVolumesd
from pipeline.data.coregistration import CheckCoregistrationd, estimate_shift_mm
from pipeline.data.datasets import build_slice_dataset, build_volume_dataset
from pipeline.data.errors import CoregistrationWarning, InvalidInputError, MisregistrationError, MissingFilesError
from pipeline.data.foreground import ForegroundMaskd, foreground_mask
from pipeline.data.manifest import (
    IMAGE_KEYS,
    LABEL_KEYS,
    MASK_KEY,
    REFERENCE_KEYS,
    check_datalist,
    ensure_study,
    load_datalist,
    read_manifest,
)
from pipeline.data.normalization import ScaleByMaskedPercentiled
from pipeline.data.slices import SliceDataset, brain_slices
from pipeline.data.transforms import build_volume_transforms

__all__ = [
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "MASK_KEY",
    "REFERENCE_KEYS",
    "CheckCoregistrationd",
    "CheckMapUnitsd",
    "CheckMaskd",
    "CheckVolumed",
    "CoregistrationWarning",
    "ForegroundMaskd",
    "InvalidInputError",
    "LoadVolumesd",
    "MisregistrationError",
    "MissingFilesError",
    "ScaleByMaskedPercentiled",
    "SliceDataset",
    "brain_slices",
    "build_slice_dataset",
    "build_volume_dataset",
    "build_volume_transforms",
    "check_datalist",
    "ensure_study",
    "estimate_shift_mm",
    "foreground_mask",
    "load_datalist",
    "read_manifest",
]
