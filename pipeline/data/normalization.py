"""Per-subject intensity normalisation inside the brain mask: what each image is divided by (its *reference*).

``"brain"``: weighted images and M0 maps are divided by their 99th percentile inside the brain mask, so brain tissue
lies in ~[0, 1] whatever the scanner scaling (robust to bright outliers: at most 1% of brain voxels end above 1).
``"csf"``: the T1w and T2w are divided by their median in the CSF instead (:class:`ScaleByCsfd`), which disease does
not move, so a change of a tissue's T1 or T2 reaches the network in full. The physics loss is scale-invariant per
contrast, so any per-contrast scale is valid. T1/T2 maps are not normalised
here: they are converted from ms to network units with ``NormalizeIntensityd(divisor=MAP_UNIT_MS)``
(see :mod:`pipeline.data.transforms`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from pipeline.data.errors import InvalidInputError, describe_item
from pipeline.data.manifest import IMAGE_KEYS, MASK_KEY


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


INTENSITY_REFERENCES = ("brain", "csf")
"""What each weighted image is divided by (:func:`intensity_normalisation`): ``"brain"`` its 99th percentile in the
brain mask; ``"csf"`` the T1w and T2w their median in the CSF (:class:`ScaleByCsfd`), the FLAIR (which nulls CSF)
its 99th percentile in the brain."""

CSF_PERCENTILE = 98.0
"""The CSF of :class:`ScaleByCsfd`: brain-mask voxels whose T2w is above this percentile there (CSF is the T2w's
brightest tissue: its T2 is ten times the brain's; 2 % of the brain: ventricles and the largest sulci)."""


class ScaleByCsfd(MapTransform):
    """Divide each key (C, X, Y, Z) by its median over the CSF: the voxels of ``mask_key`` (1, X, Y, Z) where
    ``csf_key`` (the T2w) is above its :data:`CSF_PERCENTILE` there.

    CSF is water: its T1, T2 and PD do not change with disease, so its intensity is the image's gain (receive chain,
    scaling) alone, and a change of a tissue's T1 or T2 stays in the divided image in full. The brain's 99th
    percentile (:class:`ScaleByMaskedPercentiled`) is a tissue in most images (the MPRAGE's white matter): a change
    of that tissue moves the divisor with it and is divided away (hand-written: MONAI's intensity transforms have no
    reference region). The median over 2 % of the brain is robust to noise; a CSF median that is not positive (an
    image that nulls CSF, as a FLAIR does) raises :class:`InvalidInputError`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        csf_key: str = "t2w",
        mask_key: str = "mask",
        csf_percentile: float = CSF_PERCENTILE,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.csf_key, self.mask_key, self.csf_percentile = csf_key, mask_key, csf_percentile

    def csf(self, data: Mapping[Hashable, torch.Tensor]) -> np.ndarray:
        """(X, Y, Z) boolean CSF region of ``data``."""
        inside = convert_to_numpy(data[self.mask_key])[0] > 0
        reference = convert_to_numpy(data[self.csf_key])[0]
        return inside & (reference > np.percentile(reference[inside], self.csf_percentile))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        csf = self.csf(d)
        for key in self.key_iterator(d):
            image = d[key]
            scale = np.array([np.median(channel[csf]) if csf.any() else 0.0 for channel in convert_to_numpy(image)])
            if not (scale > 0).all():
                raise InvalidInputError(
                    f"{describe_item(d, key)}: median in the CSF (the {self.csf_key}'s brightest "
                    f"{100 - self.csf_percentile:g} % of the brain mask) is {scale.tolist()}, cannot normalise to "
                    "it (an image that nulls CSF? use intensity_reference 'brain')"
                )
            d[key] = image / torch.as_tensor(scale, dtype=image.dtype).reshape(-1, *([1] * (image.ndim - 1)))
        return d


def intensity_normalisation(
    reference: str = "brain", m0_keys: Sequence[str] = (), mask_key: str = MASK_KEY, percentile: float = 99.0
) -> list[MapTransform]:
    """The transforms that divide the weighted images (``t1w``, ``t2w``, ``flair``) and the M0 maps ``m0_keys`` by
    their :data:`INTENSITY_REFERENCES` ``reference`` (the M0 maps always by their ``percentile`` in the brain)."""
    if reference not in INTENSITY_REFERENCES:
        raise ValueError(f"intensity_reference must be one of {INTENSITY_REFERENCES}, got {reference!r}.")
    in_brain = IMAGE_KEYS if reference == "brain" else IMAGE_KEYS[2:]
    by_percentile = ScaleByMaskedPercentiled((*in_brain, *m0_keys), mask_key=mask_key, percentile=percentile)
    if reference == "brain":
        return [by_percentile]
    return [ScaleByCsfd(IMAGE_KEYS[:2], csf_key=IMAGE_KEYS[1], mask_key=mask_key), by_percentile]
