"""Receive-bias correction of the weighted images: SimpleITK's N4 (Tustison et al. 2010, IEEE TMI 29:1310).

A coil's receive sensitivity multiplies every weighted image by a smooth field the signal models do not have: the
synthetic images of the hybrid loss (:mod:`pipeline.losses`) are bias-free, so one least-squares factor per slice
cannot match their edges to the acquired ones where the field varies across the slice. :class:`CorrectBiasFieldd`
divides each weighted image by its N4 estimate of that field, inside the brain mask, before the intensity
normalisation; the network then sees (and the edge term compares against) the corrected images, in training and in
inference alike (``bias_correction`` of the bundle configs, off by default).

N4 is fitted on the image shrunk by :data:`SHRINK_FACTOR` (the field is smooth: a 4 mm grid resolves it) and its log
field is then evaluated on the full grid (``GetLogBiasFieldAsImage``), the usual way to run N4 fast; ~1-3 s per 1 mm
volume. The field's overall scale is arbitrary (N4 fits the log field up to a constant); the percentile normalisation
that follows removes it.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from pipeline.data.errors import InvalidInputError, describe_item

SHRINK_FACTOR = 4
"""N4 is fitted on the image shrunk by this factor per axis (1 mm → 4 mm)."""
ITERATIONS = (50, 50, 50, 50)
"""Maximum N4 iterations per fitting level (four levels: the control-point grid doubles at each)."""


def n4_bias_field(
    image: np.ndarray, mask: np.ndarray, shrink_factor: int = SHRINK_FACTOR, iterations: Sequence[int] = ITERATIONS
) -> np.ndarray:
    """The N4 estimate of the multiplicative bias field of ``image``, fitted inside ``mask``.

    Args:
        image: (X, Y, Z) non-negative intensities (any unit).
        mask: (X, Y, Z) voxels the field is fitted on (nonzero: inside); zero intensities are left out of the fit
            (N4 fits the log intensities).
        shrink_factor: per-axis shrink of the fitting grid.
        iterations: maximum iterations of each fitting level.

    Returns:
        (X, Y, Z) float32 field, positive everywhere; ``image / field`` is the corrected image.
    """
    full = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))  # the axis order is N4's concern only
    inside = sitk.GetImageFromArray(np.ascontiguousarray((mask != 0) & (image > 0), dtype=np.uint8))
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([int(n) for n in iterations])
    shrink = [int(shrink_factor)] * 3
    corrector.Execute(sitk.Shrink(full, shrink), sitk.Shrink(inside, shrink))
    return np.exp(sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full))).astype(np.float32)


class CorrectBiasFieldd(MapTransform):
    """Divide each key (C, X, Y, Z) by its N4 bias field (:func:`n4_bias_field`) fitted inside ``mask_key``.

    Each channel gets its own field. Raises :class:`InvalidInputError` for a negative image inside the mask (N4 fits
    the log of the intensities) and for a mask of fewer voxels than N4's fitting grid needs.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        shrink_factor: int = SHRINK_FACTOR,
        iterations: Sequence[int] = ITERATIONS,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.shrink_factor = shrink_factor
        self.iterations = tuple(iterations)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        inside = convert_to_numpy(d[self.mask_key])[0] > 0
        if inside.sum() < 64 * self.shrink_factor**3:  # N4 needs a few hundred samples on its shrunk grid
            raise InvalidInputError(
                f"{describe_item(d, self.mask_key)}: {int(inside.sum())} brain voxels are too few for the bias-field "
                "correction (bias_correction)"
            )
        for key in self.key_iterator(d):
            image = d[key]
            channels = convert_to_numpy(image)
            if (channels[:, inside] < 0).any():
                raise InvalidInputError(
                    f"{describe_item(d, key)}: negative intensities inside the brain mask; the bias-field correction "
                    "(bias_correction) needs magnitude images"
                )
            fields = np.stack(
                [n4_bias_field(channel, inside, self.shrink_factor, self.iterations) for channel in channels]
            )
            d[key] = image / torch.as_tensor(fields, dtype=image.dtype, device=image.device)
        return d
