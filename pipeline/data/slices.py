"""2D slice dataset over cached 3D volumes: every slice with enough brain, served without reloading anything."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.data import Dataset
from monai.transforms import apply_transform
from monai.utils import convert_to_tensor

SLICED_KEYS = ("image", "label", "label_failed", "mask", "reference")
"""Volume keys (C, X, Y, Z) cut into slices; ``subject`` is copied, ``slice`` added."""


def brain_slices(mask: torch.Tensor, axis: int = 0, min_brain_fraction: float = 0.1) -> list[int]:
    """Indices along spatial ``axis`` of ``mask`` (1, X, Y, Z) whose fraction of mask pixels ≥ ``min_brain_fraction``.

    Always skips slices without any mask pixel (even with ``min_brain_fraction=0``).
    """
    slice_masks = convert_to_tensor(mask[0] > 0, track_meta=False).movedim(axis, 0).flatten(1).float()
    fractions = slice_masks.mean(dim=1)
    keep = (fractions >= min_brain_fraction) & (fractions > 0)
    return torch.nonzero(keep).flatten().tolist()


class SliceDataset(Dataset):
    """Sagittal (by default) 2D items cut from already-processed volumes.

    Args:
        volumes: processed volume dicts (``image`` (3, X, Y, Z), ``mask`` (1, X, Y, Z), optional ``label`` and
            ``reference`` (3, X, Y, Z), ``subject``), e.g. a ``CacheDataset`` of the volume pipeline; each volume
            is read when the index is built and at every item, so it must be cached, not recomputed.
        axis: spatial axis sliced (0 = X, sagittal slices).
        min_brain_fraction: slices whose fraction of mask pixels is smaller are skipped.
        transform: callable or sequence of callables applied to every slice item (e.g. ``ResizeWithPadOrCropd``
            to a fixed size, random flips).

    Items: ``image`` (3, H, W) float32, ``mask`` (1, H, W), [``label`` (3, H, W)], [``reference`` (3, H, W)] (plain
    tensors before ``transform``), ``subject`` (str), ``slice`` (int index along ``axis``); ``list_data_collate``
    batches them.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping],
        axis: int = 0,
        min_brain_fraction: float = 0.1,
        transform: Sequence[Callable] | Callable | None = None,
    ):
        self.volumes = volumes
        self.axis = axis
        index = [
            (volume_index, slice_index)
            for volume_index in range(len(volumes))
            for slice_index in brain_slices(volumes[volume_index]["mask"], axis, min_brain_fraction)
        ]
        super().__init__(data=index, transform=transform)

    def _transform(self, index: int) -> dict:
        volume_index, slice_index = self.data[index]
        volume = self.volumes[volume_index]
        item = {
            key: convert_to_tensor(volume[key], track_meta=False).select(self.axis + 1, slice_index).clone()
            for key in SLICED_KEYS
            if key in volume
        }
        item.update(subject=volume["subject"], slice=slice_index)
        return apply_transform(self.transform, item) if self.transform is not None else item
