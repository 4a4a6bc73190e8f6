"""Per-slice metrics between predicted maps and the 1 mm reference maps of the test subjects.

Files (the evaluation's fixed layout):

* references: a decathlon manifest's ``testing`` entries (keys ``subject``, ``t1w``, ``t2w``, ``flair``,
  ``t1_ref``, ``t2_ref``, ``m0_ref``, ``mask``; paths relative to the dataset dir), read by
  :func:`pipeline.data.manifest.load_datalist`. A subject is named by its entry's ``subject``, else by
  the stem of its T1w file.
* predictions: ``<predictions_dir>/<subject>/{t1,t2,m0}_map.nii.gz`` in ms, on the subject's grid.

Every volume is read in RAS (nibabel ``as_closest_canonical``) after checking it shares shape and
affine with the subject's T1 reference, so sagittal slice ``i`` is index ``i`` along the first array
axis (left to right) for every file.

Metrics, as in the paper's Table 2, are computed on T1 and T2 only (M0 is not evaluated) in units of
3 s (``value_ms / MAP_UNIT_MS``), per sagittal slice whose brain-mask fraction is at least
``min_brain_fraction``:

* ``MPE``: mean percentage error |x̂ - x| / x over the brain mask, in % (:func:`pipeline.metrics.mpe`);
* ``HFEN``: normalised high-frequency error norm (:func:`pipeline.metrics.hfen`);
* ``PSNR``: in dB, MONAI ``PSNRMetric(max_val=data_range)`` (:func:`pipeline.metrics.map_psnr_metric`;
  ``inf`` where the maps are identical);
* ``SSIM``: MONAI ``SSIMMetric`` (:func:`pipeline.metrics.map_ssim_metric`: 11×11 Gaussian window,
  sigma 1.5, k1 0.01, k2 0.03, valid region), which equals scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

and in the form of the literature that excludes CSF (e.g. Qiu et al. 2021: 5.1 % T1 / 7.1 % T2), over the
**parenchyma**: the brain-mask voxels whose reference T1 is below ``PARENCHYMA_MAX_T1_MS`` (2000 ms; CSF is
~4000 ms, the longest tissue T1 -- lesions -- ~1700 ms; with relaxation rates mixed, a grey-matter voxel reaches
2000 ms at about half CSF), the same region for T1 and T2:

* ``MPE_parenchyma``: the MPE over the parenchyma, in %;
* ``MAE_parenchyma_ms``: the mean absolute error over the parenchyma, in ms.

HFEN, PSNR and SSIM are computed on the whole slice with the background (outside the brain mask)
set to zero in both the prediction and the reference, so that neither the network's background
output nor the reference's background noise enters the scores. ``data_range`` (the PSNR peak and the
SSIM dynamic range) is, unless fixed by the caller, the reference map's maximum inside the brain
mask of the whole subject, in units of 3 s: one value per subject and map, shared by all its slices
and by every model, so that the models' scores stay comparable.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import load_datalist
from pipeline.engine import MAP_NAMES
from pipeline.metrics import hfen, map_psnr_metric, map_ssim_metric, mpe
from pipeline.physics import MAP_UNIT_MS
from pipeline.sharding import gather_tables, shard

METRICS = ("MPE", "HFEN", "PSNR", "SSIM", "MPE_parenchyma", "MAE_parenchyma_ms")
"""Metric columns: the paper's Table-2 order, then the parenchyma (no CSF) forms of the literature."""

PARENCHYMA_MAX_T1_MS = 2000.0
"""Brain-mask voxels whose reference T1 is shorter are parenchyma (the rest is CSF or mostly CSF)."""

PER_SLICE_COLUMNS = ["model", "subject", "slice", "map", *METRICS]
"""Columns of :func:`per_slice_metrics`' table (``per_slice.csv``)."""

REFERENCE_KEYS = {"T1": "t1_ref", "T2": "t2_ref"}
"""Evaluated map -> manifest key of its 1 mm reference (M0 is not evaluated, as in the paper)."""

PREDICTION_FILES = {"T1": f"{MAP_NAMES[0]}.nii.gz", "T2": f"{MAP_NAMES[1]}.nii.gz"}
"""Evaluated map -> file name inside ``<predictions_dir>/<subject>/``."""

GRID_ATOL_MM = 1e-3
"""Largest difference (mm) between two affines' entries for the volumes to share a grid."""

DEFAULT_MIN_BRAIN_FRACTION = 0.1
"""Sagittal slices with a smaller fraction of brain-mask pixels are not evaluated."""


def load_test_subjects(
    datalist: str | os.PathLike, dataset_dir: str | os.PathLike | None = None, section: str = "testing"
) -> list[dict]:
    """Read the entries of a manifest section that carry reference maps and a brain mask.

    Args:
        datalist: decathlon-style manifest (JSON).
        dataset_dir: folder the manifest's paths are relative to; default :func:`pipeline.data.manifest_base_dir`.
        section: the manifest list to evaluate.

    Returns:
        One dict per entry with absolute file paths and a ``subject`` name
        (:func:`pipeline.data.manifest.load_datalist`, which also checks that every file exists).
    """
    subjects = load_datalist(datalist, section=section, dataset_dir=dataset_dir)
    for entry in subjects:
        missing = [key for key in (*REFERENCE_KEYS.values(), "mask") if key not in entry]
        if missing:
            raise InvalidInputError(f"{datalist} [{section}]: {entry['subject']} lacks the keys {missing}.")
    return subjects


def as_prediction_sets(predictions: str | os.PathLike | Mapping[str, str | os.PathLike]) -> dict[str, pathlib.Path]:
    """``{model name: predictions dir}``; a single dir is named after its folder."""
    if isinstance(predictions, Mapping):
        sets = {str(name): pathlib.Path(folder) for name, folder in predictions.items()}
    else:
        sets = {pathlib.Path(predictions).name: pathlib.Path(predictions)}
    if not sets:
        raise ValueError("No prediction set given.")
    return sets


def prediction_path(predictions_dir: str | os.PathLike, subject: str, map_name: str) -> pathlib.Path:
    """``<predictions_dir>/<subject>/<t1|t2>_map.nii.gz`` for ``map_name`` in ``PREDICTION_FILES``."""
    return pathlib.Path(predictions_dir, subject, PREDICTION_FILES[map_name])


def check_predictions_exist(subjects: Sequence[Mapping], prediction_sets: Mapping[str, os.PathLike]) -> None:
    """Raise :class:`MissingFilesError` listing every missing prediction file, before any metric is computed."""
    missing = [
        str(prediction_path(folder, entry["subject"], map_name))
        for folder in prediction_sets.values()
        for entry in subjects
        for map_name in PREDICTION_FILES
        if not prediction_path(folder, entry["subject"], map_name).is_file()
    ]
    if missing:
        raise MissingFilesError(f"{len(missing)} missing prediction file(s):\n  " + "\n  ".join(missing), missing)


def read_ras(path: str | os.PathLike, grid_of: str | os.PathLike | None = None) -> np.ndarray:
    """Read a NIfTI volume as a float32 (X, Y, Z) array in RAS orientation.

    Args:
        path: the NIfTI file.
        grid_of: a NIfTI file ``path`` must share its shape and affine with (within ``GRID_ATOL_MM``);
            an :class:`InvalidInputError` (a ``ValueError``) naming both files is raised otherwise.
    """
    image = nib.load(path)
    if grid_of is not None:
        other = nib.load(grid_of)
        if image.shape != other.shape or not np.allclose(image.affine, other.affine, rtol=0.0, atol=GRID_ATOL_MM):
            raise InvalidInputError(
                f"{path} (shape {image.shape}, affine\n{image.affine}) and {grid_of} (shape {other.shape}, "
                f"affine\n{other.affine}) are not on the same grid."
            )
    return np.asarray(nib.as_closest_canonical(image).get_fdata(dtype=np.float32))


def evaluated_slices(mask: np.ndarray, min_brain_fraction: float) -> np.ndarray:
    """Indices along X of the sagittal slices of a (X, Y, Z) boolean brain ``mask`` with enough brain."""
    return np.flatnonzero(mask.mean(axis=(1, 2)) >= min_brain_fraction)


def slice_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    mask: np.ndarray,
    slices: np.ndarray,
    data_range: float,
    parenchyma: np.ndarray | None = None,
) -> pd.DataFrame:
    """The ``METRICS`` of sagittal slices of one map.

    Args:
        pred: predicted map (X, Y, Z) in units of 3 s.
        ref: reference map (X, Y, Z) in units of 3 s, on the same RAS grid.
        mask: boolean brain mask (X, Y, Z).
        slices: non-empty indices along X of the slices to evaluate.
        data_range: PSNR peak and SSIM dynamic range, in units of 3 s.
        parenchyma: boolean (X, Y, Z) region of ``MPE_parenchyma`` and ``MAE_parenchyma_ms``; default ``mask``.

    Returns:
        Columns ``slice`` and ``METRICS``, one row per slice (NaN parenchyma metrics where a slice has none).
    """
    slice_mask = torch.as_tensor(mask[slices, None])  # (N, 1, Y, Z)
    pred_slices = torch.as_tensor(pred[slices, None]) * slice_mask
    ref_slices = torch.as_tensor(ref[slices, None]) * slice_mask
    psnr = map_psnr_metric(max_val=data_range)(pred_slices, ref_slices)
    ssim = map_ssim_metric(data_range=data_range)(pred_slices, ref_slices)
    parenchyma = mask if parenchyma is None else parenchyma & mask
    errors_ms = np.abs(pred - ref) * MAP_UNIT_MS
    return pd.DataFrame(
        {
            "slice": slices,
            "MPE": [mpe(p[0], r[0], mask=m[0]) for p, r, m in zip(pred_slices, ref_slices, slice_mask)],
            "HFEN": [hfen(p[0], r[0], normalized=True) for p, r in zip(pred_slices, ref_slices)],
            "PSNR": psnr.flatten().double().numpy(),
            "SSIM": ssim.flatten().double().numpy(),
            "MPE_parenchyma": [mpe(pred[i], ref[i], mask=parenchyma[i]) for i in slices],
            "MAE_parenchyma_ms": [
                float(errors_ms[i][parenchyma[i]].mean()) if parenchyma[i].any() else np.nan for i in slices
            ],
        }
    )


def per_slice_metrics(
    subjects: Sequence[Mapping],
    prediction_sets: Mapping[str, str | os.PathLike],
    min_brain_fraction: float = DEFAULT_MIN_BRAIN_FRACTION,
    data_range: float | None = None,
) -> pd.DataFrame | None:
    """Metrics of every evaluated slice, map, subject and model.

    Args:
        subjects: entries of :func:`load_test_subjects`.
        prediction_sets: ``{model name: predictions dir}``.
        min_brain_fraction: sagittal slices with a smaller brain-mask fraction are skipped.
        data_range: PSNR peak / SSIM dynamic range in units of 3 s; ``None``: the reference map's maximum
            inside the brain mask of each subject.

    Returns:
        The ``per_slice.csv`` table, columns ``PER_SLICE_COLUMNS``; ``map`` is ``"T1"`` or ``"T2"``. In a
        ``torch.distributed`` run (``sharded_evaluate.json``) every rank computes the metrics of its shard of
        ``subjects`` (:func:`pipeline.sharding.shard`) and rank 0 returns the gathered table, the rows in the order of
        a one-process run; the other ranks return ``None``.
    """
    check_predictions_exist(subjects, prediction_sets)  # every subject's, on every rank: one error, before any metric
    tables = []
    for entry in shard(subjects):
        grid = entry[REFERENCE_KEYS["T1"]]
        mask = read_ras(entry["mask"], grid_of=grid) > 0
        slices = evaluated_slices(mask, min_brain_fraction)
        if slices.size == 0:
            warnings.warn(f"{entry['subject']}: no sagittal slice has a brain fraction >= {min_brain_fraction}.")
            continue
        parenchyma = read_ras(entry[REFERENCE_KEYS["T1"]]) < PARENCHYMA_MAX_T1_MS
        for map_name, reference_key in REFERENCE_KEYS.items():
            ref = read_ras(entry[reference_key], grid_of=grid) / MAP_UNIT_MS
            subject_range = float(ref[mask].max()) if data_range is None else data_range
            for model, folder in prediction_sets.items():
                pred = read_ras(prediction_path(folder, entry["subject"], map_name), grid_of=grid) / MAP_UNIT_MS
                table = slice_metrics(pred, ref, mask, slices, subject_range, parenchyma)
                tables.append(table.assign(model=model, subject=entry["subject"], map=map_name))
    shard_table = pd.concat(tables, ignore_index=True)[PER_SLICE_COLUMNS] if tables else None
    table = gather_tables(pd.DataFrame(columns=PER_SLICE_COLUMNS) if shard_table is None else shard_table)
    if table is not None and table.empty:
        raise ValueError(f"No sagittal slice of any subject has a brain fraction >= {min_brain_fraction}.")
    return table
