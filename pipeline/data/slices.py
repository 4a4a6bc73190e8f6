"""2D slice dataset over cached 3D volumes: every slice with enough brain, served without reloading anything."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.data import Dataset
from monai.transforms import apply_transform
from monai.utils import convert_to_tensor

SLICED_KEYS = ("image", "label", "label_failed", "mask", "reference")
"""Volume keys (C, X, Y, Z) cut into slices; ``subject`` is copied, ``slice`` added."""
IMAGE_CHANNELS = 3
"""Weighted images of a subject (T1w MPRAGE, T2w TSE, T2w FLAIR): the channels of one slice."""


def input_channels(context_slices: int = 0) -> int:
    """Network input channels when each slice comes with ``context_slices`` neighbours on either side (2.5D)."""
    if int(context_slices) < 0:
        raise ValueError(f"context_slices must be 0 (2D slices) or a number of neighbours, got {context_slices}.")
    return IMAGE_CHANNELS * (2 * int(context_slices) + 1)


def stack_neighbour_slices(
    image: torch.Tensor, axis: int, context_slices: int = 0, index: int | None = None
) -> torch.Tensor:
    """Each slice of ``image`` along spatial ``axis`` with its ``context_slices`` neighbours on either side as channels.

    Args:
        image: (C, X, Y, Z) or (B, C, X, Y, Z) volume.
        axis: spatial axis the slices are taken along (0 = X, sagittal).
        context_slices: neighbours k on either side; 0 returns ``image`` itself.
        index: one slice's index along ``axis``: only that slice is stacked, and the slice axis is dropped.

    Returns:
        (C·(2k+1), X, Y, Z) (or (B, C·(2k+1), X, Y, Z)); channel block j holds the slices at offset 0, -1, +1, ...,
        -k, +k from each slice (the first block is ``image`` itself, so channel c of the acquired images stays channel
        c), the nearest edge slice standing in for neighbours outside the volume. With ``index``: the same channels
        of that slice, (C·(2k+1), H, W) (or with B).
    """
    slice_dim, channel_dim, context = axis - 3, -4, int(context_slices)  # dims from the end: (..., C, X, Y, Z)
    if context == 0 and index is None:
        return image
    n = image.shape[slice_dim]
    centres = torch.arange(n, device=image.device) if index is None else torch.tensor([index], device=image.device)
    offsets = [0] + [sign * k for k in range(1, context + 1) for sign in (-1, 1)]
    blocks = [image.index_select(slice_dim, (centres + offset).clamp(0, n - 1)) for offset in offsets]
    stacked = torch.cat(blocks, dim=channel_dim)
    return stacked if index is None else stacked.select(slice_dim, 0)


def brain_only(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The network's input masked to the brain: ``image`` (B, C·n, ...) with channel block j (C channels) zeroed where
    channel j of the 0/1 ``mask`` (B, n, ...) is 0.

    ``n`` is 1 for a volume or a 2D slice (one mask for every channel), or ``2k+1`` for a 2.5D slice stack whose mask
    was stacked like its images (:func:`stack_neighbour_slices`: each neighbour masked by its own slice of the mask, as
    a masked volume sliced afterwards would be).

    Raises:
        ValueError: the mask's channels do not divide the image's, or the spatial shapes differ.
    """
    channels, blocks = image.shape[1], mask.shape[1]
    if channels % blocks or image.shape[2:] != mask.shape[2:]:
        raise ValueError(
            f"the input mask {tuple(mask.shape)} does not fit the network input {tuple(image.shape)}: one mask "
            "channel per block of image channels, same spatial shape"
        )
    return image * (mask > 0).to(image.dtype).repeat_interleave(channels // blocks, dim=1)


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
            is read when the index is built and at every item, so it must be cached, not recomputed. A
            ``SmartCacheDataset`` holds a changing subset: :meth:`refresh` re-indexes it after its cache was updated.
        axis: spatial axis sliced (0 = X, sagittal slices).
        min_brain_fraction: slices whose fraction of mask pixels is smaller are skipped.
        context_slices: neighbouring slices on either side stacked onto each ``image`` slice as channels (2.5D,
            :func:`stack_neighbour_slices`); 0: the slice alone.
        mask_inputs: add ``input_mask``, the ``mask`` slices stacked like the ``image`` ones (2·context_slices+1, H,
            W), for a network whose input is masked to the brain (:func:`brain_only`); the ``image`` stays unmasked
            (the physics terms compare it with the re-synthesised images).
        transform: callable or sequence of callables applied to every slice item (e.g. ``ResizeWithPadOrCropd``
            to a fixed size, random flips).

    Items: ``image`` (3·(2·context_slices+1), H, W) float32 (channels 0-2: the slice itself), ``mask`` (1, H, W),
    [``label`` (3, H, W)], [``reference`` (3, H, W)], [``input_mask`` (2·context_slices+1, H, W)] (plain tensors before
    ``transform``), ``subject`` (str), ``slice`` (int index along ``axis``); ``list_data_collate`` batches them.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping],
        axis: int = 0,
        min_brain_fraction: float = 0.1,
        transform: Sequence[Callable] | Callable | None = None,
        context_slices: int = 0,
        mask_inputs: bool = False,
    ):
        self.volumes = volumes
        self.axis = axis
        self.min_brain_fraction = min_brain_fraction
        self.context_slices = context_slices
        self.mask_inputs = mask_inputs
        super().__init__(data=self._slice_index(), transform=transform)

    def _slice_index(self) -> list[tuple[int, int]]:
        """(volume index, slice index) of every slice with enough brain."""
        return [
            (volume_index, slice_index)
            for volume_index in range(len(self.volumes))
            for slice_index in brain_slices(self.volumes[volume_index]["mask"], self.axis, self.min_brain_fraction)
        ]

    def refresh(self, seed: int = 0) -> None:
        """Re-index the slices after the volumes changed (a ``SmartCacheDataset``'s ``update_cache``).

        The number of items stays the same, so an engine's epoch length and a sampler's indices stay valid: the
        new index is drawn (seeded) from the new volumes' slices, without repetition when there are enough.
        """
        index = self._slice_index()
        generator = torch.Generator().manual_seed(seed)
        draws = torch.cat([torch.randperm(len(index), generator=generator) for _ in range(-(-len(self) // len(index)))])
        self.data = [index[i] for i in draws[: len(self)].tolist()]

    def _transform(self, index: int) -> dict:
        volume_index, slice_index = self.data[index]
        volume = self.volumes[volume_index]
        item = {
            key: convert_to_tensor(volume[key], track_meta=False).select(self.axis + 1, slice_index).clone()
            for key in SLICED_KEYS
            if key in volume and key != "image"
        }
        image = convert_to_tensor(volume["image"], track_meta=False)
        item["image"] = stack_neighbour_slices(image, self.axis, self.context_slices, slice_index)  # a copy
        if self.mask_inputs:
            mask = convert_to_tensor(volume["mask"], track_meta=False)
            item["input_mask"] = stack_neighbour_slices(mask, self.axis, self.context_slices, slice_index)
        item.update(subject=volume["subject"], slice=slice_index)
        return apply_transform(self.transform, item) if self.transform is not None else item
