"""Foreground (head/brain) mask from the T1w, for entries that come without a brain mask (e.g. inference).

Triangle threshold (SimpleITK) of the T1w, largest connected component, 3D hole filling (scipy): background
noise is dropped, dark enclosed structures such as the ventricles' CSF are kept. The triangle method suits MR
histograms dominated by a dark background peak; Otsu would instead split the dark CSF from the bright tissue. On skull-stripped or brain-only
images this is the brain; on images with skull it is the head, so normalisation percentiles then include the
scalp (the physics loss is scale-invariant, so that only changes the per-contrast scale).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Boolean foreground of a 3D image (X, Y, Z): triangle threshold, largest connected component, holes filled."""
    triangle = sitk.TriangleThresholdImageFilter()
    triangle.Execute(sitk.GetImageFromArray(image.astype(np.float32)))
    labels, count = ndimage.label(image > triangle.GetThreshold())
    if count == 0:
        return np.zeros(image.shape, dtype=bool)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ndimage.binary_fill_holes(labels == largest)


class ForegroundMaskd(MapTransform):
    """Add ``mask_key`` (1, X, Y, Z) float32 {0, 1}: the :func:`foreground_mask` of ``keys`` (one key, the T1w).

    The mask keeps the T1w's meta (affine, shape; ``filename_or_obj`` = ``"foreground of <T1w file>"``), so later
    steps treat it like a loaded mask.
    """

    def __init__(self, keys: KeysCollection = "t1w", mask_key: str = "mask", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            mask = torch.as_tensor(foreground_mask(image[0].cpu().numpy()), dtype=torch.float32)[None]
            if isinstance(image, MetaTensor):
                meta = {**image.meta, "filename_or_obj": f"foreground of {image.meta.get('filename_or_obj')}"}
                mask = MetaTensor(mask, meta=meta)
            d[self.mask_key] = mask
        return d
