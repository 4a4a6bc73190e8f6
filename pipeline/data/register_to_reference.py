"""The MONAI dictionary transform of the rigid registration to the T1w: :class:`RegisterToReferenced`.

It registers keys to the T1w (:func:`~pipeline.data.registration.register_rigid`), moves further keys with the same
transform (the T2 and M0 maps with the T1 map's), resamples them onto the T1w's grid, records the transform's size in
``d["registration"]`` and optionally writes each transform as ``.tfm``
(:func:`~pipeline.data.registration.write_transform`) and the records as :data:`REGISTRATION_FILE`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pipeline.data.coregistration import to_sitk
from pipeline.data.errors import InvalidInputError, MisregistrationError, describe_item
from pipeline.data.registration import array_xyz, bias_corrected, register_rigid, resample_onto, write_transform
from pipeline.files import write_atomically

logger = logging.getLogger(__name__)

REGISTRATION_FILE = "registration.json"
"""Beside the ``.tfm`` files: each key's :meth:`~pipeline.data.registration.RigidRegistration.to_dict`
(rotation, displacements, final metric)."""


def to_metatensor(image: sitk.Image, like: MetaTensor) -> MetaTensor:
    """A (1, X, Y, Z) float32 MetaTensor of ``image`` (on ``like``'s grid) with ``like``'s affine and meta."""
    array = torch.from_numpy(np.ascontiguousarray(array_xyz(image), dtype=np.float32))[None]
    if tuple(array.shape[1:]) != tuple(like.shape[1:]):
        raise ValueError(f"image of size {tuple(array.shape[1:])} is not on the grid of shape {tuple(like.shape[1:])}")
    meta = copy.deepcopy(like.meta)
    meta["affine"] = like.affine.clone()
    return MetaTensor(array, meta=meta)


class RegisterToReferenced(MapTransform):
    """Register ``keys`` to ``reference_key`` rigidly and resample them (and their groups) onto its grid.

    Inputs are channel-first MetaTensors (1, X, Y, Z) with RAS affines (e.g. after ``Orientationd``). For each key:
    :func:`~pipeline.data.registration.register_rigid` (fixed: the reference, moving: the key; NaN voxels count as 0
    for the metric), then the key and each key of ``groups[key]`` are resampled with that transform onto the
    reference's grid (linear interpolation; voxels outside the moving image → 0; a NaN voxel, e.g. a label's fit
    failure, stays NaN and spreads to the output voxels interpolated from it, it never becomes a valid number). Outputs
    are float32 MetaTensors with the reference's affine, spatial shape and meta except ``filename_or_obj``, which stays
    the moving file's (as MONAI's ``ResampleToMatch``). ``d["registration"][key]`` records
    :meth:`~pipeline.data.registration.RigidRegistration.to_dict` (plus ``moved_keys`` and, with ``transform_dir``,
    ``transform_file``).

    Args:
        keys: keys registered to the reference (the reference itself is skipped).
        reference_key: the fixed image (the T1w).
        groups: ``{key: [further keys]}`` moved with ``key``'s transform, e.g. ``{"t1_map": ["t2_map", "m0_map"]}``
            (maps from one fit share its geometry).
        mask_key: optional key of a brain mask restricting the metric (any grid); used when present in the data.
        transform_dir: if given, each transform is written to ``<transform_dir>/<subject>/<key>_to_<reference>.tfm``,
            and the records to ``<transform_dir>/<subject>/registration.json`` (:data:`REGISTRATION_FILE`).
        overwrite: replace existing ``.tfm`` files; otherwise an existing one raises :class:`FileExistsError` (before
            registering).
        max_displacement_mm: if given, a registration moving the mask box by more raises
            :class:`~pipeline.data.errors.MisregistrationError` (the inputs were far apart: likely the wrong file).
        correct_reference_bias: register against the reference divided by its N4 bias field
            (:func:`~pipeline.data.registration.bias_corrected`, once per call, ~1-3 s); the outputs are always
            resampled onto the reference's own grid.
        seed: seed of the metric sampling.
        allow_missing_keys: skip absent keys (and absent group keys).
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str = "t1w",
        groups: Mapping[str, Sequence[str]] | None = None,
        mask_key: str | None = None,
        transform_dir: str | os.PathLike | None = None,
        overwrite: bool = False,
        max_displacement_mm: float | None = None,
        correct_reference_bias: bool = True,
        seed: int = 0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.reference_key = reference_key
        self.groups = {key: tuple(members) for key, members in (groups or {}).items()}
        unknown = sorted(set(self.groups) - set(self.keys))
        if unknown:
            raise ValueError(f"groups name keys that are not registered: {unknown} (keys: {list(self.keys)})")
        members = [member for group in self.groups.values() for member in group]
        overlapping = sorted(set(members) & (set(self.keys) | {reference_key}))
        if overlapping or len(members) != len(set(members)):
            raise ValueError(
                f"a group key must be neither registered itself nor in two groups: {overlapping or members}"
            )
        self.mask_key = mask_key
        self.transform_dir = None if transform_dir is None else pathlib.Path(transform_dir)
        self.overwrite = overwrite
        self.max_displacement_mm = max_displacement_mm
        self.correct_reference_bias = correct_reference_bias
        self.seed = seed

    def transform_path(self, data: Mapping, key: str) -> pathlib.Path | None:
        """``<transform_dir>/<subject>/<key>_to_<reference_key>.tfm``, or None without ``transform_dir``."""
        if self.transform_dir is None:
            return None
        subject = data.get("subject")
        if not subject:
            raise InvalidInputError(f"{describe_item(data, key)}: a 'subject' entry is needed to name its .tfm file")
        return self.transform_dir / str(subject) / f"{key}_to_{self.reference_key}.tfm"

    @staticmethod
    def _check_volume(data: Mapping, key: str) -> None:
        value = data[key]
        if not isinstance(value, MetaTensor) or value.ndim != 4 or value.shape[0] != 1:
            shape = tuple(getattr(value, "shape", ()))
            raise InvalidInputError(
                f"{describe_item(data, key)}: expected a (1, X, Y, Z) MetaTensor, got shape {shape}"
            )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        self._check_volume(d, self.reference_key)
        reference = to_sitk(d[self.reference_key])
        fixed = None  # the (bias-corrected) reference, computed only if a key is registered
        fixed_mask = None
        if self.mask_key is not None and self.mask_key in d:
            self._check_volume(d, self.mask_key)
            fixed_mask = to_sitk(d[self.mask_key])
        records = dict(d.get("registration", {}))
        for key in self.key_iterator(d):
            if key == self.reference_key:
                continue
            moved = (key, *(member for member in self.groups.get(key, ()) if member in d))
            missing = [member for member in self.groups.get(key, ()) if member not in d]
            if missing and not self.allow_missing_keys:
                raise KeyError(f"{describe_item(d, key)}: keys {missing} of its group are missing")
            for name in moved:
                self._check_volume(d, name)
            path = self.transform_path(d, key)
            if path is not None and path.exists() and not self.overwrite:
                raise FileExistsError(
                    f"{describe_item(d, key)}: transform file '{path}' exists; pass overwrite=True to replace it"
                )
            if fixed is None:
                fixed = bias_corrected(reference) if self.correct_reference_bias else reference
            result = register_rigid(fixed, to_sitk(d[key]), fixed_mask=fixed_mask, seed=self.seed)
            if self.max_displacement_mm is not None and result.max_displacement_mm > self.max_displacement_mm:
                raise MisregistrationError(
                    f"{describe_item(d, key)} needs a {result.max_displacement_mm:.1f} mm displacement "
                    f"(rotation {result.rotation_deg:.1f}°) to align with {self.reference_key} file "
                    f"'{d[self.reference_key].meta.get('filename_or_obj')}' (limit {self.max_displacement_mm:g} mm)"
                )
            for name in moved:
                image = d[name]
                resampled = to_metatensor(
                    resample_onto(to_sitk(image), reference, result.transform), d[self.reference_key]
                )
                resampled.meta["filename_or_obj"] = image.meta.get("filename_or_obj")  # as MONAI's ResampleToMatch
                d[name] = resampled
            record = {**result.to_dict(), "moved_keys": list(moved)}
            if path is not None:
                record["transform_file"] = str(write_transform(result.transform, path, overwrite=self.overwrite))
            records[key] = record
            logger.info(
                f"{d.get('subject', '?')}: {key} registered to {self.reference_key}: rotation {result.rotation_deg:.2f}°, "
                f"displacements up to {result.max_displacement_mm:.2f} mm, metric {result.metric:.4f}"
            )
        d["registration"] = records
        if self.transform_dir is not None and records:
            write_atomically(self.transform_dir / str(d["subject"]) / REGISTRATION_FILE, json.dumps(records, indent=2))
        return d
