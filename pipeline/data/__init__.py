"""Manifests and MONAI transforms from NIfTI subjects to normalised volumes and 2D slices.

* :mod:`~pipeline.data.manifest`: read / validate decathlon manifests, regenerate the default phantom study;
* :mod:`~pipeline.data.checks`, :mod:`~pipeline.data.coregistration`: input-validation transforms;
* :mod:`~pipeline.data.foreground`, :mod:`~pipeline.data.normalization`: masks and intensity scaling;
* :mod:`~pipeline.data.transforms`: the composed volume pipeline;
* :mod:`~pipeline.data.slices`, :mod:`~pipeline.data.datasets`: cached volumes → slice datasets;
* :mod:`~pipeline.data.validity`: failed fits of label maps left out of the supervised term;
* :mod:`~pipeline.data.validation`: every problem of a whole study at once (``python -m pipeline.validate``); its
  swap and contrast checks in :mod:`~pipeline.data.tissue_contrasts`.
"""

from pipeline.data.brain_mask import BrainMaskd
from pipeline.data.checks import CheckMapUnitsd, CheckMaskd, CheckVolumed, LoadVolumesd
from pipeline.data.coregistration import CheckCoregistrationd, estimate_shift_mm
from pipeline.data.datasets import build_slice_dataset, build_volume_dataset
from pipeline.data.errors import CoregistrationWarning, InvalidInputError, MisregistrationError, MissingFilesError
from pipeline.data.foreground import foreground_mask
from pipeline.data.manifest import (
    IMAGE_KEYS,
    LABEL_KEYS,
    MASK_KEY,
    REFERENCE_KEYS,
    check_datalist,
    ensure_study,
    load_datalist,
    manifest_base_dir,
    read_manifest,
)
from pipeline.data.normalization import INTENSITY_REFERENCES, ScaleByCsfd, ScaleByMaskedPercentiled
from pipeline.data.slices import SliceDataset, brain_slices, input_channels, stack_neighbour_slices
from pipeline.data.transforms import build_volume_transforms
from pipeline.data.validation import Problem, problems_table, require_valid_study, validate_study

__all__ = [
    "IMAGE_KEYS",
    "INTENSITY_REFERENCES",
    "LABEL_KEYS",
    "MASK_KEY",
    "REFERENCE_KEYS",
    "BrainMaskd",
    "CheckCoregistrationd",
    "CheckMapUnitsd",
    "CheckMaskd",
    "CheckVolumed",
    "CoregistrationWarning",
    "InvalidInputError",
    "LoadVolumesd",
    "MisregistrationError",
    "MissingFilesError",
    "Problem",
    "ScaleByCsfd",
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
    "input_channels",
    "load_datalist",
    "problems_table",
    "manifest_base_dir",
    "read_manifest",
    "require_valid_study",
    "stack_neighbour_slices",
    "validate_study",
]
