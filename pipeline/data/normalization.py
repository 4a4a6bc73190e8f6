"""Per-subject intensity normalisation inside the brain mask.

Weighted images and M0 maps are divided by their 99th percentile inside the brain mask, so brain tissue lies in
~[0, 1] whatever the scanner scaling (robust to bright outliers: at most 1% of brain voxels end above 1). The
physics loss is scale-invariant per contrast, so any per-contrast scale is valid. T1/T2 maps are not normalised
here: they are converted from ms to network units with ``NormalizeIntensityd(divisor=MAP_UNIT_MS)``
(see :mod:`pipeline.data.transforms`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from pipeline.data.errors import InvalidInputError, describe_item


class ScaleByMaskedPercentiled(MapTransform):
    """Divide each key (C, X, Y, Z) by the ``percentile`` of its values inside ``mask_key`` (1, X, Y, Z).

    MONAI's ``ScaleIntensityRangePercentilesd`` takes percentiles over the whole image, where the background share
    (and so the percentile) depends on the field of view; it has no mask argument, hence this small transform.
    Each channel is scaled by its own percentile; a non-positive percentile raises :class:`InvalidInputError`.
    """

    def __init__(
        self, keys: KeysCollection, mask_key: str = "mask", percentile: float = 99.0, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.percentile = percentile

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        inside = convert_to_numpy(d[self.mask_key])[0] > 0
        for key in self.key_iterator(d):
            image = d[key]
            # numpy: torch.quantile refuses inputs above 2**24 elements
            scale = np.array([np.percentile(channel[inside], self.percentile) for channel in convert_to_numpy(image)])
            if not (scale > 0).all():
                raise InvalidInputError(
                    f"{describe_item(d, key)}: {self.percentile:g}th percentile inside the brain mask is "
                    f"{scale.tolist()}, cannot normalise (image empty inside the mask?)"
                )
            d[key] = image / torch.as_tensor(scale, dtype=image.dtype).reshape(-1, *([1] * (image.ndim - 1)))
        return d
