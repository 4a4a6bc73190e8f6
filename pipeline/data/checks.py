"""Input-validation transforms: loading with clear errors, volume shape and finiteness, mask, map units.

Every transform works on dicts of channel-first MetaTensors (C, X, Y, Z) and raises an
:class:`~pipeline.data.errors.InvalidInputError` (or :class:`~pipeline.data.errors.MissingFilesError`) whose
message names the subject, the key and the file (the MetaTensor's ``filename_or_obj``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform
from monai.utils import convert_to_tensor

from pipeline.data.errors import InvalidInputError, MissingFilesError, describe_item


class LoadVolumesd(MapTransform):
    """Load each key's file with MONAI's ``LoadImage`` as a float32 channel-first MetaTensor (C, X, Y, Z).

    ``LoadImaged`` itself does not say which file failed for corrupt content (a truncated ``.nii.gz`` raises a bare
    ``EOFError``), so each key is loaded here with the error re-raised naming the subject, key and file:
    :class:`MissingFilesError` for a missing file, :class:`InvalidInputError` for anything unreadable.
    """

    def __init__(self, keys: KeysCollection, reader: str | None = None, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.loader(d[key])
            except FileNotFoundError as error:
                raise MissingFilesError(f"{describe_item(d, key)} does not exist", [str(d[key])]) from error
            except Exception as error:
                raise InvalidInputError(
                    f"{describe_item(d, key)} cannot be read (corrupt or not an image): {type(error).__name__}: {error}"
                ) from error
        return d


class CheckVolumed(MapTransform):
    """Require each key to be one 3D volume: shape (1, X, Y, Z) after channel-first loading, finite, not constant.

    Rejects 2D images, 4D images with more than one frame, NaN/Inf voxels (unless ``allow_non_finite``: label maps,
    whose failed fits :mod:`pipeline.data.validity` leaves out) and, with ``allow_constant=False`` (the weighted
    images), a constant volume such as an all-zero image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        allow_non_finite: bool = False,
        allow_constant: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.allow_non_finite, self.allow_constant = allow_non_finite, allow_constant

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            problem = volume_problem(convert_to_tensor(d[key], track_meta=False), self.allow_non_finite)
            if problem is None and not self.allow_constant:
                problem = constant_problem(convert_to_tensor(d[key], track_meta=False))
            if problem is not None:
                raise InvalidInputError(f"{describe_item(d, key)} {problem}")
        return d


def volume_problem(image: torch.Tensor, allow_non_finite: bool = False) -> str | None:
    """Why ``image`` (C, X, Y, Z) is not one finite 3D volume (None if it is); the phrase follows the file's name."""
    spatial_shape = tuple(image.shape[1:])
    if len(spatial_shape) != 3 or image.shape[0] != 1:
        return (
            f"is not a single 3D volume: spatial shape {spatial_shape} with {image.shape[0]} frame(s); expected a "
            "NIfTI of shape (X, Y, Z) or (X, Y, Z, 1)"
        )
    if 0 in spatial_shape:
        return f"is empty: spatial shape {spatial_shape}"
    non_finite = 0 if allow_non_finite else int((~torch.isfinite(image)).sum())
    return f"has {non_finite} NaN/Inf voxel(s)" if non_finite else None


def constant_problem(image: torch.Tensor) -> str | None:
    """``"is constant (every voxel = v)"`` for a constant (e.g. all-zero) image, else None."""
    finite = torch.isfinite(image)
    values = image if bool(finite.all()) else image[finite]  # no copy for the usual all-finite image
    if values.numel():
        low, high = torch.aminmax(values)
        if bool(low == high):
            return f"is constant (every voxel = {float(low):g}): an empty or failed acquisition"
    return None


class CheckMaskd(MapTransform):
    """Require each mask key (1, X, Y, Z) to contain at least one non-zero (brain) voxel."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if not bool((convert_to_tensor(d[key], track_meta=False) > 0).any()):
                raise InvalidInputError(f"{describe_item(d, key)} is an empty mask (no non-zero voxel)")
        return d


class CheckMapUnitsd(MapTransform):
    """Require relaxation-time maps to be in ms: median inside the brain mask (NaN left out) within ``median_range_ms``.

    A median below the range looks like seconds (e.g. T1 ≈ 1), above it like µs or a scaled map; both raise an
    :class:`InvalidInputError` telling the user how to convert. Maps and mask must share the grid (run after label
    resampling).

    Args:
        keys: map keys, each (1, X, Y, Z) in ms.
        median_range_ms: plausible (low, high) median in ms, e.g. (100, 10000) for T1 and (10, 5000) for T2.
        mask_key: brain mask (1, X, Y, Z), non-zero inside.
    """

    def __init__(
        self,
        keys: KeysCollection,
        median_range_ms: tuple[float, float],
        mask_key: str = "mask",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.median_range_ms = median_range_ms
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        low, high = self.median_range_ms
        inside = convert_to_tensor(d[self.mask_key], track_meta=False) > 0
        for key in self.key_iterator(d):
            # nanmedian: the failed fits of label maps are NaN here (pipeline.data.validity)
            median = float(torch.nanmedian(convert_to_tensor(d[key], track_meta=False)[inside]))
            if median < low:
                hint = "it looks like seconds; maps must be in ms: convert it (e.g. multiply by 1000)"
            elif median > high:
                hint = "it looks like µs or a rescaled map; maps must be in ms: convert it (e.g. divide by 1000)"
            else:
                continue
            raise InvalidInputError(
                f"{describe_item(d, key)}: median {median:.4g} inside the brain mask is outside the plausible "
                f"range [{low:g}, {high:g}] ms: {hint}"
            )
        return d
