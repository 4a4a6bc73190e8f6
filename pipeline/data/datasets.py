"""Config-friendly builders: manifest (or datalist) → volume dataset → 2D slice dataset.

Every argument is a plain value, so MONAI bundle configs can call these with ``_target_``. How many processed volumes
stay in memory is ``cache_num`` (MONAI's dataset classes, chosen by it):

* ``-1``: every volume, computed once (``CacheDataset``): training on studies that fit in RAM (~0.1 GiB per 1 mm
  subject with labels);
* ``0``: none (``Dataset``): each volume is computed when it is read and dropped after, so inference and QC over a
  cohort take the memory of one subject;
* ``N > 0``: ``N`` volumes (``SmartCacheDataset``): training on more subjects than fit in RAM; after each epoch
  ``replace_rate`` of them are swapped for volumes computed in a background thread during the epoch
  (:class:`pipeline.handlers.SmartSliceCacheHandler`), so every subject is trained on over the epochs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from monai.data import CacheDataset, Dataset, SmartCacheDataset

from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import LABEL_KEYS, MASK_KEY, REFERENCE_KEYS, check_datalist, load_datalist
from pipeline.data.slices import SliceDataset
from pipeline.data.transforms import build_volume_transforms

T = TypeVar("T")


def _has_keys(datalist: Sequence[dict], keys: Sequence[str], what: str) -> bool:
    """Whether every entry has ``keys``; False if none has; :class:`InvalidInputError` if only some have."""
    having = [all(key in entry for key in keys) for entry in datalist]
    if any(having) and not all(having):
        lacking = [entry["subject"] for entry, has in zip(datalist, having) if not has]
        raise InvalidInputError(f"some entries have {what} ({list(keys)}) and others not: {lacking} lack them")
    return all(having)


def _input_error(error: RuntimeError) -> Exception | None:
    """The data error behind MONAI's ``RuntimeError("applying transform ...")`` wrappers, or None.

    MONAI re-raises a transform's exception as a ``RuntimeError`` from it, once per nesting level, so the clear
    message would otherwise only show in the chained traceback.
    """
    cause = error
    while cause.__cause__ is not None and str(cause).startswith("applying transform"):
        cause = cause.__cause__
    return cause if isinstance(cause, (InvalidInputError, MissingFilesError)) else None


def _raising_input_errors(compute: Callable[[], T]) -> T:
    """``compute()``, raising the data error behind a MONAI transform wrapper itself (:func:`_input_error`)."""
    try:
        return compute()
    except RuntimeError as error:
        input_error = _input_error(error)
        if input_error is None:
            raise
    raise input_error  # outside the except clause, so it is not chained to MONAI's wrapper


class StreamingVolumeDataset(Dataset):
    """MONAI ``Dataset`` computing each volume when it is read; bad input raises the data error itself."""

    def _transform(self, index: int):
        return _raising_input_errors(functools.partial(Dataset._transform, self, index))


def build_volume_dataset(
    datalist: str | os.PathLike | Sequence[dict],
    dataset_dir: str | os.PathLike | None = None,
    section: str = "training",
    with_labels: bool | None = None,
    with_reference: bool | None = None,
    with_mask: bool | None = None,
    label_keys: Sequence[str] = LABEL_KEYS,
    cache_num: int = -1,
    replace_rate: float = 0.25,
    cache_num_workers: int = 0,
    progress: bool = False,
    **transform_options,
) -> Dataset:
    """Processed volumes of a datalist: all, some or none of them kept in memory (``cache_num``).

    Args:
        datalist: manifest path (``section`` of it is loaded with :func:`~pipeline.data.manifest.load_datalist`)
            or a list of entry dicts whose paths are used as they are (checked by
            :func:`~pipeline.data.manifest.check_datalist`).
        dataset_dir: folder of the manifest's relative paths; default the manifest's folder (unused for lists).
        section: manifest section.
        with_labels, with_reference, with_mask: which optional files to use; default (None): those every entry has.
        label_keys: entry keys of the (T1, T2, M0) training labels (``REFERENCE_KEYS``: the 1 mm maps).
        cache_num: volumes kept in memory: -1 all (``CacheDataset``), 0 none (``Dataset``, computed when read),
            N > 0 that many (``SmartCacheDataset``; the caller's engine swaps them, see the module docstring).
        replace_rate: share of a ``SmartCacheDataset``'s volumes replaced after each epoch.
        cache_num_workers: threads computing the cached volumes.
        progress: show a progress bar while caching.
        transform_options: further keyword arguments of
            :func:`~pipeline.data.transforms.build_volume_transforms` (``max_shift_mm``, ``on_failure``, ...).

    Returns:
        a dataset of dicts ``image`` (3, X, Y, Z), ``mask`` (1, X, Y, Z), [``label``], [``reference``]
        (3, X, Y, Z), ``subject``. Bad input raises the data error itself (not MONAI's RuntimeError wrapper): when
        the dataset is built for cached volumes, when the volume is read otherwise.
    """
    if isinstance(datalist, (str, os.PathLike)):
        entries = load_datalist(datalist, section, dataset_dir)
    else:
        entries = check_datalist(datalist)
    transforms = build_volume_transforms(
        with_labels=_has_keys(entries, label_keys, "labels") if with_labels is None else with_labels,
        with_reference=_has_keys(entries, REFERENCE_KEYS, "references") if with_reference is None else with_reference,
        with_mask=_has_keys(entries, (MASK_KEY,), "a mask") if with_mask is None else with_mask,
        label_keys=label_keys,
        **transform_options,
    )
    if cache_num == 0:
        return StreamingVolumeDataset(entries, transforms)
    if cache_num < -1:
        raise ValueError(f"cache_num must be -1 (all), 0 (none) or a number of volumes, got {cache_num}.")
    cache = {"progress": progress, "copy_cache": False}
    if cache_num == -1 or cache_num >= len(entries):
        return _raising_input_errors(
            lambda: CacheDataset(entries, transforms, cache_rate=1.0, num_workers=cache_num_workers, **cache)
        )
    workers = max(cache_num_workers, 1)
    return _raising_input_errors(
        lambda: SmartCacheDataset(
            entries,
            transforms,
            replace_rate=replace_rate,
            cache_num=cache_num,
            num_init_workers=workers,
            num_replace_workers=workers,
            **cache,
        )
    )


def build_slice_dataset(
    datalist: str | os.PathLike | Sequence[dict],
    dataset_dir: str | os.PathLike | None = None,
    section: str = "training",
    slice_transforms: Sequence[Callable] | Callable | None = None,
    min_brain_fraction: float = 0.1,
    axis: int = 0,
    context_slices: int = 0,
    mask_inputs: bool = False,
    **volume_options,
) -> SliceDataset:
    """2D slices (sagittal by default) of the cached volumes of a datalist.

    Args:
        datalist, dataset_dir, section: as in :func:`build_volume_dataset`.
        slice_transforms: applied to every slice item, e.g. ``ResizeWithPadOrCropd`` to a fixed (H, W), flips.
        min_brain_fraction: slices with a smaller fraction of mask pixels are skipped.
        axis: spatial axis sliced (0 = X: sagittal).
        context_slices: neighbours on either side stacked onto each image slice as channels (2.5D); 0: none.
        mask_inputs: items carry ``input_mask`` for a network whose input is masked to the brain
            (:class:`~pipeline.data.slices.SliceDataset`).
        volume_options: further keyword arguments of :func:`build_volume_dataset` (``with_reference``,
            ``cache_num_workers``, ``max_shift_mm``, ...).

    Returns:
        a :class:`~pipeline.data.slices.SliceDataset` of items ``image`` (3·(2·context_slices+1), H, W), ``mask``
        (1, H, W), [``label``, ``reference`` (3, H, W)], [``input_mask``], ``subject``, ``slice``.
    """
    volumes = build_volume_dataset(datalist, dataset_dir, section, **volume_options)
    return SliceDataset(volumes, axis, min_brain_fraction, slice_transforms, context_slices, mask_inputs)
