"""The predicted maps as a BIDS derivative dataset (qMRI-BIDS parametric maps).

Layout (BIDS specification: "Derivatives > Common data types" and "Derivatives > Imaging data types", "Magnetic
Resonance Imaging > Anatomy imaging data > Parametric maps", "Modality agnostic files > Derived dataset and pipeline
description", "Common principles > BIDS URI"; quantitative MRI appendix)::

    <bids_root>/derivatives/qmap-hybrid/        (or ``out_dir``)
        dataset_description.json                DatasetType "derivative", GeneratedBy, DatasetLinks {"raw": ...}
        sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-hybrid_T1map.nii.gz + .json     T1 in s
        sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-hybrid_T2map.nii.gz + .json     T2 in s
        sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-hybrid_M0map.nii.gz + .json     M0, arbitrary units

The maps are the inference's (:class:`pipeline.engine.SaveMapsd`: ``<predictions_dir>/<entry>/t1_map.nii.gz``, ...
in ms on the T1w's grid, zero outside the brain mask), converted to the units of the suffixes in bidsschematools'
schema (T1map, T2map: ``s``; M0map: ``arbitrary``). Sidecars: ``Units``, ``Description``, ``Sources`` (BIDS URIs
``bids:raw:<path>`` of the T1w, T2w and FLAIR the network read), ``EstimationAlgorithm``, ``EstimationReference`` and
``SkullStripped: true`` (required for image derivatives; the maps are masked to the brain). The checkpoint's SHA-256
is in ``GeneratedBy[0]`` of ``dataset_description.json`` (its ``Description`` and the non-standard key
``CheckpointSHA256``). ``DatasetLinks.raw`` is the raw dataset's path relative to the derivative dataset.

File names are checked with bidsschematools' derivative file rules (:func:`is_valid_derivative_path`); the
bids-validator Python package (``BIDSValidator().is_bids``) knows only the raw rules and rejects every ``desc-``
parametric map, so it cannot check derivatives.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import NamedTuple

import nibabel as nib
import numpy as np

from pipeline import __version__
from pipeline.bids.manifest import bids_root_of
from pipeline.bids.map_units import check_outside_dataset
from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import SECTIONS, read_manifest
from pipeline.files import write_atomically

PIPELINE_NAME = "qmap-hybrid"
"""``GeneratedBy`` name and the default folder under ``<bids_root>/derivatives/``."""
DESCRIPTION_LABEL = "hybrid"
"""The ``desc-`` entity of the maps."""
PREDICTION_NAMES = {"T1map": "t1_map", "T2map": "t2_map", "M0map": "m0_map"}
"""BIDS suffix → the prediction file stem (``pipeline.engine.MAP_NAMES``, in ms / a.u.)."""
PREDICTION_UNITS = {"T1map": "ms", "T2map": "ms", "M0map": "arbitrary"}
"""Unit of each prediction file (docs/architecture.md: maps on disk in ms)."""
UNIT_FACTORS_FROM_MS = {("ms", "s"): 1e-3, ("ms", "ms"): 1.0, ("arbitrary", "arbitrary"): 1.0}
"""(prediction unit, BIDS unit) → factor."""
ESTIMATION_ALGORITHM = (
    "deep learning: 2D U-Net (MONAI BasicUNet, softplus output) estimating T1, T2 and M0 from the T1w MPRAGE, T2w TSE "
    "and T2w FLAIR images, trained with a hybrid loss: L1 to low-resolution label maps plus a physics-informed "
    "self-supervised, scale-invariant Sobel-edge L1 between MPRAGE/TSE images re-synthesised from the maps and the "
    "acquired images"
)
ESTIMATION_REFERENCE = (
    "Hybrid supervised and physics-informed self-supervised loss for training parameter-estimation networks with "
    "limited low-resolution labels (conference abstract, the method qmap-hybrid implements); network: Qiu S, Chen Y, "
    "Ma S, et al. Multiparametric mapping in the brain from conventional contrast-weighted images using deep "
    "learning. Magn Reson Med. 2021. https://doi.org/10.1002/mrm.28962"
)
RAW_DATASET_NAME = "raw"
"""The ``<dataset-name>`` of the raw dataset in BIDS URIs (``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``)."""
SOURCE_KEYS = ("t1w", "t2w", "flair")
"""The entry's ``bids`` record keys of the files cited in ``Sources``."""


def _schema():
    from bidsschematools.schema import load_schema

    return load_schema()


@functools.lru_cache(maxsize=1)
def _derivative_regexes() -> tuple[re.Pattern, ...]:
    """bidsschematools' file-name rules of derivative datasets (``rules.files.deriv`` and ``rules.files.common``)."""
    from bidsschematools.rules import regexify_filename_rules

    schema = _schema()
    rules = [
        rule
        for group in (schema.rules.files.common, schema.rules.files.deriv)
        for rule in regexify_filename_rules(group, schema, level=2)
    ]
    return tuple(re.compile(rule["regex"]) for rule in rules)


def is_valid_derivative_path(relative_path: str) -> bool:
    """Whether a POSIX path relative to a derivative dataset's root matches a bidsschematools derivative file rule."""
    return any(regex.match(relative_path) for regex in _derivative_regexes())


def bids_version() -> str:
    """The BIDS version of bidsschematools' bundled schema (``BIDSVersion`` of what is written)."""
    return str(_schema().bids_version)


def suffix_unit(suffix: str) -> str:
    """The unit the BIDS schema gives a suffix (``T1map`` → ``"s"``, ``M0map`` → ``"arbitrary"``)."""
    return str(_schema().objects.suffixes[suffix].unit)


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the model checkpoint), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def derivative_path(participant: str, session: str | None, suffix: str, extension: str = ".nii.gz") -> str:
    """``sub-X[/ses-Y]/anat/sub-X[_ses-Y]_desc-hybrid_<suffix><extension>`` (POSIX, relative to the dataset root)."""
    folder = f"sub-{participant}" + (f"/ses-{session}" if session else "") + "/anat"
    prefix = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    return f"{folder}/{prefix}_desc-{DESCRIPTION_LABEL}_{suffix}{extension}"


def dataset_description(raw_link: str, checkpoint: str | os.PathLike | None = None) -> dict:
    """``dataset_description.json`` of the derivative dataset.

    Args:
        raw_link: ``DatasetLinks.raw``: the raw dataset relative to the derivative dataset (or a URI).
        checkpoint: the model checkpoint whose SHA-256 is recorded (None: not recorded).
    """
    generated_by = {"Name": PIPELINE_NAME, "Version": __version__}
    if checkpoint is not None:
        sha = checkpoint_sha256(checkpoint)
        generated_by["Description"] = (
            f"maps predicted with the model checkpoint {pathlib.Path(checkpoint).name} (SHA-256 {sha})"
        )
        generated_by["CheckpointSHA256"] = sha
    else:
        generated_by["Description"] = "maps predicted by qmap-hybrid (model checkpoint not recorded)"
    return {
        "Name": "qmap-hybrid quantitative T1, T2 and M0 maps",
        "BIDSVersion": bids_version(),
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "DatasetLinks": {RAW_DATASET_NAME: raw_link},
    }


def map_sidecar(suffix: str, units: str, sources: list[str]) -> dict:
    """The JSON sidecar of one map (module docstring)."""
    what = {
        "T1map": "T1 (longitudinal relaxation time)",
        "T2map": "T2 (transverse relaxation time)",
        "M0map": "M0 (equilibrium magnetization)",
    }[suffix]
    return {
        "Description": f"{what} map in {units} predicted by qmap-hybrid from the weighted images, on the T1w's grid, "
        "zero outside the brain mask",
        "Units": units,
        "Sources": sources,
        "EstimationAlgorithm": ESTIMATION_ALGORITHM,
        "EstimationReference": ESTIMATION_REFERENCE,
        "SkullStripped": True,
    }


def _nifti_bytes(data: np.ndarray, like: nib.Nifti1Image) -> bytes:
    """Gzipped float32 NIfTI of ``data`` with ``like``'s affine and header (reproducible: no gzip timestamp)."""
    image = nib.Nifti1Image(data.astype(np.float32), like.affine, header=like.header)
    image.header.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    """The JSON sidecar of a ``.nii.gz`` path."""
    return path.with_name(path.name.removesuffix(".nii.gz") + ".json")


class PlannedMap(NamedTuple):
    """One map of the derivative dataset: its prediction file (ms / a.u.), its target path, BIDS suffix and
    ``Sources``."""

    source: pathlib.Path
    target: pathlib.Path
    suffix: str
    sources: list[str]


def _entries(content: Mapping, name: str) -> list[dict]:
    entries = [entry for section in SECTIONS for entry in content.get(section, [])]
    lacking = [entry.get("subject", "?") for entry in entries if "bids" not in entry]
    if lacking:
        raise InvalidInputError(
            f"manifest {name}: entries {lacking} have no 'bids' record (write the manifest with "
            "python -m pipeline.bids manifest)"
        )
    return entries


def write_derivatives(
    predictions_dir: str | os.PathLike,
    manifest: str | os.PathLike | Mapping,
    out_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write the predicted maps of a BIDS manifest's entries as a qMRI-BIDS derivative dataset (module docstring).

    Args:
        predictions_dir: the inference's ``output_dir`` (``<entry subject>/t1_map.nii.gz``, ``t2_map.nii.gz`` in ms,
            ``m0_map.nii.gz``); entries without a folder there are skipped, other folders ignored.
        manifest: the manifest :func:`pipeline.bids.write_manifest` wrote (path, or dict with an absolute
            ``bids_root``); its entries' ``bids`` records name the outputs and their ``Sources``.
        out_dir: the derivative dataset; default ``<bids_root>/derivatives/qmap-hybrid``.
        checkpoint: the model checkpoint the maps come from (its SHA-256 is recorded).
        overwrite: replace existing maps / sidecars / a different ``dataset_description.json``; otherwise they raise
            :class:`FileExistsError` before anything is written.

    Returns:
        the derivative dataset's folder.

    Raises:
        MissingFilesError: no entry has predictions, or an entry's prediction folder lacks a map.
        InvalidInputError: a map not on its T1w's grid (shape, affine), entries without ``bids`` records.
        ValueError: ``out_dir`` inside the raw dataset (outside its ``derivatives/``).
    """
    name = "<dict>" if isinstance(manifest, Mapping) else f"'{manifest}'"
    content = manifest if isinstance(manifest, Mapping) else read_manifest(manifest)
    base_dir = None if isinstance(manifest, Mapping) else pathlib.Path(manifest).resolve().parent
    bids_root = bids_root_of(content, base_dir)
    out = pathlib.Path(out_dir).resolve() if out_dir is not None else bids_root / "derivatives" / PIPELINE_NAME
    check_outside_dataset(out, "derivative dataset", bids_root)
    predictions = pathlib.Path(predictions_dir)
    entries = _predicted_entries(content, name, predictions)
    units = {suffix: suffix_unit(suffix) for suffix in PREDICTION_NAMES}
    factors = _factors_from_prediction_units(units)
    description = dataset_description(pathlib.Path(os.path.relpath(bids_root, out)).as_posix(), checkpoint)
    plan = _planned_maps(entries, predictions, bids_root, out)
    description_path = out / "dataset_description.json"
    description_text = json.dumps(description, indent=2) + "\n"
    _refuse_overwriting(plan, description_path, description_text, overwrite)
    for source, target, suffix, sources in plan:
        prediction = nib.load(source)
        data = np.asarray(prediction.dataobj, dtype=np.float32) * np.float32(factors[suffix])
        write_atomically(target, _nifti_bytes(data, prediction))
        write_atomically(_sidecar(target), json.dumps(map_sidecar(suffix, units[suffix], sources), indent=2) + "\n")
    write_atomically(description_path, description_text)
    return out


def _predicted_entries(content: Mapping, name: str, predictions: pathlib.Path) -> list[dict]:
    """The manifest's entries with a folder in ``predictions``, each holding every map of :data:`PREDICTION_NAMES`.

    Raises:
        MissingFilesError: no entry has a folder, or a folder lacks a map (every missing file listed).
    """
    entries = [e for e in _entries(content, name) if (predictions / e["subject"]).is_dir()]
    if not entries:
        expected = [str(predictions / e["subject"]) for e in _entries(content, name)]
        raise MissingFilesError(f"no predictions in '{predictions}' for the entries of manifest {name}", expected)
    missing = [
        str(predictions / e["subject"] / f"{stem}.nii.gz")
        for e in entries
        for stem in PREDICTION_NAMES.values()
        if not (predictions / e["subject"] / f"{stem}.nii.gz").is_file()
    ]
    if missing:
        raise MissingFilesError(f"incomplete predictions in '{predictions}':\n  " + "\n  ".join(missing), missing)
    return entries


def _factors_from_prediction_units(units: Mapping[str, str]) -> dict[str, float]:
    """``{suffix: factor}`` from each prediction's unit (:data:`PREDICTION_UNITS`) to the schema's ``units``."""
    factors = {}
    for suffix, unit in units.items():
        if (PREDICTION_UNITS[suffix], unit) not in UNIT_FACTORS_FROM_MS:
            raise RuntimeError(f"no conversion from {PREDICTION_UNITS[suffix]} to the schema's {suffix} unit {unit!r}")
        factors[suffix] = UNIT_FACTORS_FROM_MS[(PREDICTION_UNITS[suffix], unit)]
    return factors


def _planned_maps(
    entries: list[dict], predictions: pathlib.Path, bids_root: pathlib.Path, out: pathlib.Path
) -> list[PlannedMap]:
    """Every map to write, checked before anything is written.

    Raises:
        InvalidInputError: a prediction not on its T1w's grid (shape, affine), a target that is not a valid BIDS
            derivative file name.
    """
    plan = []
    for entry in entries:
        record = entry["bids"]
        sources = [f"bids:{RAW_DATASET_NAME}:{record[key]}" for key in SOURCE_KEYS]
        t1w_path = bids_root / record["t1w"]
        t1w = nib.load(t1w_path)
        for suffix, stem in PREDICTION_NAMES.items():
            source = predictions / entry["subject"] / f"{stem}.nii.gz"
            prediction = nib.load(source)  # header only: the data are read when written
            if prediction.shape[:3] != t1w.shape[:3] or not np.allclose(prediction.affine, t1w.affine, atol=1e-4):
                raise InvalidInputError(
                    f"{entry['subject']}: prediction '{source}' (shape {prediction.shape}) is not on the grid of its "
                    f"T1w '{t1w_path}' (shape {t1w.shape}): write predictions with the inference (SaveMapsd)"
                )
            relative = derivative_path(record["subject"], record.get("session"), suffix)
            if not is_valid_derivative_path(relative):
                raise InvalidInputError(f"{entry['subject']}: '{relative}' is not a valid BIDS derivative file name")
            plan.append(PlannedMap(source, out / relative, suffix, sources))
    return plan


def _refuse_overwriting(
    plan: list[PlannedMap],
    description_path: pathlib.Path,
    description_text: str,
    overwrite: bool,
) -> None:
    """Raise :class:`FileExistsError` listing the maps and sidecars of ``plan`` that exist, and a
    ``dataset_description.json`` with other content, unless ``overwrite``."""
    existing = [str(path) for _, target, _, _ in plan for path in (target, _sidecar(target)) if path.exists()]
    if description_path.exists() and description_path.read_text() != description_text:
        existing.append(f"{description_path} (different content)")
    if existing and not overwrite:
        raise FileExistsError(
            "refusing to overwrite existing derivative files (pass overwrite=True, --overwrite):\n  "
            + "\n  ".join(existing)
        )
