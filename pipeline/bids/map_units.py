"""BIDS T1/T2 maps (s, or the sidecar's ``Units``) converted to the pipeline's ms, into a cache outside the
dataset, each with a record of its source so an up-to-date copy is reused."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
from collections.abc import Mapping

import nibabel as nib
import numpy as np

from pipeline.bids.layout import MAP_SUFFIXES
from pipeline.data.errors import InvalidInputError
from pipeline.files import write_atomically


UNIT_FACTORS_TO_MS = {"s": 1000.0, "ms": 1.0}
"""Accepted sidecar ``Units`` of T1/T2 maps → factor to ms."""
SPEC_MAP_UNIT = "s"
"""The unit of T1map / T2map in the BIDS specification, assumed when a sidecar has no ``Units``."""
MAP_MEDIAN_RANGES_MS = {"t1_map": (100.0, 10000.0), "t2_map": (10.0, 5000.0)}
"""Plausible median (ms) of a converted map's positive voxels, to catch wrong ``Units`` (as
``pipeline.data.transforms.T1_MEDIAN_RANGE_MS`` / ``T2_MEDIAN_RANGE_MS``)."""
CACHE_DIR_NAME = "maps_ms"
"""Default cache folder of the ms maps, beside the manifest."""


def _record_of(source: pathlib.Path, factor: float, units: str) -> dict:
    status = source.stat()
    return {
        "source": str(source),
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
        "units": units,
        "factor_to_ms": factor,
    }


def convert_map_to_ms(
    source: str | os.PathLike,
    target: str | os.PathLike,
    factor: float,
    units: str,
    key: str,
    where: str,
    overwrite: bool = False,
) -> pathlib.Path:
    """``target``: ``source`` (a T1/T2 map) × ``factor`` as float32 NIfTI in ms, reused while up to date.

    A ``<target stem>.source.json`` record (source path, size, modification time, units, factor) marks the copy as
    this function's: an existing ``target`` with a matching record is kept, one with another record is rewritten,
    one without a record (not written here) raises :class:`FileExistsError` unless ``overwrite``.

    Args:
        source: the BIDS map. target: the ms copy (folders created).
        factor: ms per source unit (:data:`UNIT_FACTORS_TO_MS`). units: the source's unit, recorded.
        key: ``t1_map`` or ``t2_map``, for the plausibility check (:data:`MAP_MEDIAN_RANGES_MS`).
        where: the session, for messages.

    Raises:
        InvalidInputError: the converted map's median (positive voxels) is implausible for ``key`` in ms.
    """
    source, target = pathlib.Path(source), pathlib.Path(target)
    record_path = target.with_name(target.name.replace(".nii.gz", "") + ".source.json")
    record = _record_of(source, factor, units)
    if target.exists():
        existing = json.loads(record_path.read_text()) if record_path.is_file() else None
        if existing == record:
            return target
        if existing is None and not overwrite:
            raise FileExistsError(f"'{target}' exists and was not written by pipeline.bids; pass overwrite=True")
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32) * np.float32(factor)
    positive = data[np.isfinite(data) & (data > 0)]
    low, high = MAP_MEDIAN_RANGES_MS[key]
    median = float(np.median(positive)) if positive.size else float("nan")
    if not low <= median <= high:
        raise InvalidInputError(
            f"{where}: {MAP_SUFFIXES[key]} file '{source}' has a median of {median:.4g} ms (positive voxels) after "
            f"converting from Units {units!r} (x {factor:g}), outside the plausible {low:g}-{high:g} ms: are its "
            'sidecar\'s Units right? (BIDS: seconds, "Units": "s")'
        )
    converted = nib.Nifti1Image(data, image.affine, header=image.header)
    converted.header.set_data_dtype(np.float32)
    converted.header.set_slope_inter(1.0, 0.0)
    write_atomically(target, gzip.compress(converted.to_bytes(), compresslevel=1, mtime=0))
    write_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return target


def map_units_factor(metadata: Mapping, key: str, where: str, path: str) -> tuple[str, float]:
    """``(units, factor to ms)`` of a T1/T2 map from its sidecar's ``Units`` (absent: the spec's seconds)."""
    units = metadata.get("Units", SPEC_MAP_UNIT)
    if units not in UNIT_FACTORS_TO_MS:
        raise InvalidInputError(
            f"{where}: {MAP_SUFFIXES[key]} file '{path}': sidecar Units {units!r} is not one of "
            f'{sorted(UNIT_FACTORS_TO_MS)} (BIDS: T1map/T2map in seconds, "Units": "s")'
        )
    return units, UNIT_FACTORS_TO_MS[units]


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return path == folder or folder in path.parents


def check_outside_dataset(
    path: pathlib.Path, what: str, bids_root: pathlib.Path, maps_root: pathlib.Path | None = None
) -> None:
    """:class:`ValueError` if ``path`` lies in the user's data: the raw BIDS dataset outside its ``derivatives/``, or
    the ``maps_dir`` dataset (``what`` names the path in the message)."""
    if _inside(path, bids_root) and not _inside(path, bids_root / "derivatives"):
        raise ValueError(
            f"the {what} '{path}' would be inside the BIDS dataset '{bids_root}': choose a folder outside it "
            "(or under its derivatives/)"
        )
    if maps_root is not None and _inside(path, maps_root):
        raise ValueError(f"the {what} '{path}' would be inside the maps dataset '{maps_root}': choose another folder")
