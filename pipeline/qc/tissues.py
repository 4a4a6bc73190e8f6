"""Tissue classes of a subject from its T1w image, for per-tissue QC figures.

The T1w MPRAGE (inversion time ~900 ms at 3 T) orders the brain's tissues by intensity: CSF darkest, grey matter,
white matter brightest. Two Otsu thresholds (SimpleITK's ``OtsuMultipleThresholdsImageFilter``) of the T1w's
intensities inside the brain mask split them into three classes. The classes come from the acquired input, not
from the predicted maps, so that wrong maps cannot move the regions they are judged in.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

TISSUE_CLASSES = {1: "csf", 2: "grey_matter", 3: "white_matter"}
"""Label value → tissue name of :func:`segment_tissues` (0: background, outside the brain mask)."""
HISTOGRAM_BINS = 256
"""Bins of the Otsu histogram."""


def segment_tissues(t1w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Three tissue classes of a T1w image inside a brain mask.

    Args:
        t1w: (X, Y, Z) T1w MPRAGE intensities (any scale).
        mask: (X, Y, Z) brain mask (nonzero = brain).

    Returns:
        (X, Y, Z) uint8 labels of :data:`TISSUE_CLASSES` (1 CSF, 2 grey matter, 3 white matter), 0 outside the mask.

    Raises:
        ValueError: when the mask is empty or the T1w is constant inside it.
    """
    inside = np.asarray(mask) != 0
    values = np.asarray(t1w, dtype=np.float32)[inside]
    if values.size == 0 or np.ptp(values) == 0:
        raise ValueError("segment_tissues needs a non-empty brain mask over a T1w that is not constant inside it.")
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.SetNumberOfHistogramBins(HISTOGRAM_BINS)
    otsu.Execute(sitk.GetImageFromArray(values[None, None, :]))  # the in-mask values as a 1 x 1 x N image
    thresholds = otsu.GetThresholds()
    labels = np.zeros(inside.shape, dtype=np.uint8)
    labels[inside] = 1 + np.searchsorted(np.asarray(thresholds, dtype=np.float32), values, side="right")
    return labels
