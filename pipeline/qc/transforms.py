"""QC in the data path: the MONAI transform inference runs per subject, the run's index and the calibration step.

* :class:`SubjectQCd` -- after the maps are written, checks one subject (:func:`pipeline.qc.assess.assess_subject`)
  and writes ``<output_dir>/<subject>/qc.json`` and ``report.html``; a flagged subject is logged as a warning.
* :func:`write_run_index` -- ``<output_dir>/index.html``: every subject's flags, linked to its report.
* :func:`calibrate_directory` -- thresholds from the ``qc.json`` of validation subjects, written beside the model.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, ResampleToMatch
from monai.utils import convert_to_numpy

from pipeline.data.manifest import LABEL_KEYS, REFERENCE_KEYS, load_datalist
from pipeline.data.validation import input_warnings
from pipeline.files import write_atomically
from pipeline.qc.assess import assess_subject
from pipeline.qc.calibration import DEFAULT_MARGIN, DEFAULT_MIN_RESIDUAL, DEFAULT_MIN_TOLERANCE, Floors, QCCalibration
from pipeline.qc.plausibility import PUBLISHED_RANGES_3T
from pipeline.qc.report import write_index, write_subject_report

QC_FILE = "qc.json"
REPORT_FILE = "report.html"
INDEX_FILE = "index.html"


def load_on_grid(path: str | os.PathLike, grid: MetaTensor) -> np.ndarray:
    """A NIfTI volume resampled (linearly) onto ``grid``'s (C, X, Y, Z) voxels: float32 (X, Y, Z)."""
    volume = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    return convert_to_numpy(ResampleToMatch(mode="bilinear", padding_mode="zeros")(volume, grid)[0], dtype=np.float32)


class SubjectQCd(MapTransform):
    """QC of the predicted maps of one subject (a decollated inference item); writes ``qc.json`` and ``report.html``.

    Args:
        keys: the predicted maps (3, X, Y, Z) in **ms** (after :class:`pipeline.engine.MapsToMsd`), on the grid of
            ``image_key``.
        output_dir: the maps' folder; files go to ``<output_dir>/<subject>/``.
        image_key, mask_key, subject_key: the acquired images (3, X, Y, Z) (a ``MetaTensor``: its affine is the
            grid's), the brain mask (1, X, Y, Z) and the subject name of the item.
        contrasts, protocols, smoothing_sigma, scale_window: the self-consistency check
            (:func:`pipeline.qc.consistency.self_consistency`); ``protocols`` are those in force for the subject.
        calibration: path of a ``qc_calibration.json`` (:func:`calibrate_directory`), or None; a missing file is
            logged once and the QC runs uncalibrated (values and plausibility flags only).
        datalist, dataset_dir, section: the manifest the items come from: a subject's entry supplies its
            low-resolution labels (``t1_map``, ``t2_map``: the label-resolution check) and 1 mm references
            (``t1_ref`` ...: metrics) when it has them.
        ranges: plausible class medians (default: :data:`~pipeline.qc.plausibility.PUBLISHED_RANGES_3T`).
        input_checks: the options of the run's pre-run validation (:func:`pipeline.data.validation.input_warnings`):
            its warnings about a subject's images go into its record and report; None: none are looked up.
        report: also write the HTML report.
        overwrite: replace an existing ``qc.json`` / ``report.html`` (otherwise ``FileExistsError``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        mask_key: str = "mask",
        subject_key: str = "subject",
        contrasts: Sequence[str] = ("mprage", "tse_epg"),
        protocols: Mapping[str, Any] | None = None,
        calibration: str | os.PathLike | None = None,
        datalist: str | os.PathLike | None = None,
        dataset_dir: str | os.PathLike | None = None,
        section: str = "testing",
        ranges: Mapping | None = None,
        smoothing_sigma: float = 1.0,
        scale_window: int = 0,
        input_checks: Mapping[str, Any] | None = None,
        report: bool = True,
        overwrite: bool = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir = pathlib.Path(output_dir)
        self.image_key, self.mask_key, self.subject_key = image_key, mask_key, subject_key
        self.options = {
            "contrasts": tuple(contrasts),
            "protocols": dict(protocols or {}),
            "ranges": ranges or PUBLISHED_RANGES_3T,
            "smoothing_sigma": smoothing_sigma,
            "scale_window": scale_window,
        }
        self.logger = logging.getLogger(__name__)
        self.calibration = None
        if calibration is not None and pathlib.Path(calibration).is_file():
            self.calibration = QCCalibration.load(calibration)
        elif calibration is not None:
            self.logger.warning(
                f"no QC calibration at {calibration}: QC runs uncalibrated (no self-consistency flags); run the "
                "bundle's 'calibrating' command on the validation subjects to create it."
            )
        entries = load_datalist(datalist, section, dataset_dir) if datalist is not None else []
        self.entries = {entry["subject"]: entry for entry in entries}
        self.report, self.overwrite = report, overwrite
        self.input_checks = None if input_checks is None else dict(input_checks)

    def _labels(self, entry: Mapping) -> tuple[np.ndarray, np.ndarray] | None:
        """(2, ...) T1 and T2 labels (ms) of an entry on their own grid, with its affine; None without labels."""
        if not all(key in entry for key in LABEL_KEYS[:2]):
            return None
        images = [nib.load(entry[key]) for key in LABEL_KEYS[:2]]
        if images[0].shape != images[1].shape or not np.allclose(images[0].affine, images[1].affine, atol=1e-3):
            raise ValueError(f"{entry[LABEL_KEYS[0]]} and {entry[LABEL_KEYS[1]]} are not on the same grid.")
        return np.stack([image.get_fdata(dtype=np.float32) for image in images]), images[0].affine

    def assess(self, data: Mapping[Hashable, Any], key: str = "pred") -> tuple[dict, dict]:
        """The QC record and report volumes of one item's maps ``data[key]`` (ms), without writing anything."""
        subject = str(data[self.subject_key])
        grid = data[self.image_key]
        entry = self.entries.get(subject, {})
        references = None
        if all(name in entry for name in REFERENCE_KEYS):
            references = np.stack([load_on_grid(entry[name], grid) for name in REFERENCE_KEYS])
        return assess_subject(
            subject,
            convert_to_numpy(data[key], dtype=np.float32),
            convert_to_numpy(grid, dtype=np.float32),
            convert_to_numpy(data[self.mask_key], dtype=np.float32)[0],
            np.asarray(convert_to_numpy(grid.affine), dtype=np.float64),
            calibration=self.calibration,
            labels=self._labels(entry),
            references_ms=references,
            input_warnings=() if self.input_checks is None or not entry else input_warnings(entry, **self.input_checks),
            **self.options,
        )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        subject = str(d[self.subject_key])
        subject_dir = self.output_dir / subject
        targets = [subject_dir / QC_FILE] + ([subject_dir / REPORT_FILE] if self.report else [])
        existing = [str(target) for target in targets if target.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(f"refusing to overwrite existing QC files {existing}; pass --overwrite true.")
        for key in self.key_iterator(d):
            qc, volumes = self.assess(d, key)
            write_atomically(subject_dir / QC_FILE, json.dumps(qc, indent=2) + "\n")
            if self.report:
                write_subject_report(subject_dir / REPORT_FILE, qc, volumes)
            if qc["flagged"]:
                self.logger.warning(f"{subject}: QC flags: " + "; ".join(flag["message"] for flag in qc["flags"]))
        return d


def read_reports(output_dir: str | os.PathLike) -> list[dict]:
    """The ``qc.json`` records of every subject folder of ``output_dir``, by subject name."""
    return [json.loads(path.read_text()) for path in sorted(pathlib.Path(output_dir).glob(f"*/{QC_FILE}"))]


def write_run_index(output_dir: str | os.PathLike) -> pathlib.Path:
    """``<output_dir>/index.html`` listing every subject's QC (:func:`pipeline.qc.report.write_index`)."""
    reports = [{**qc, "report": f"{qc['subject']}/{REPORT_FILE}"} for qc in read_reports(output_dir)]
    if not reports:
        raise FileNotFoundError(f"no {QC_FILE} in the subject folders of {output_dir}: nothing to index.")
    return write_index(pathlib.Path(output_dir) / INDEX_FILE, reports)


def calibrate_directory(
    qc_dir: str | os.PathLike,
    calibration: str | os.PathLike,
    margin: float = DEFAULT_MARGIN,
    min_tolerance: Floors = DEFAULT_MIN_TOLERANCE,
    model: str | os.PathLike | None = None,
    overwrite: bool = False,
    subjects: Sequence[str] | None = None,
    min_residual: float = DEFAULT_MIN_RESIDUAL,
) -> pathlib.Path:
    """Write the QC thresholds (:class:`~pipeline.qc.calibration.QCCalibration`) of the ``qc.json`` in ``qc_dir``.

    Args:
        qc_dir: the QC output of the validation subjects (``<qc_dir>/<subject>/qc.json``).
        calibration: the JSON file to write (by convention ``qc_calibration.json`` beside the model).
        margin, min_tolerance, min_residual: the rules of :class:`~pipeline.qc.calibration.QCCalibration`.
        model: the checkpoint the validation maps came from (recorded).
        overwrite: replace an existing calibration.
        subjects: the validation subjects (default: every ``qc.json`` in ``qc_dir``); a folder left from an earlier
            calibration with other subjects then cannot enter the limits.
    """
    reports = [report for report in read_reports(qc_dir) if subjects is None or report["subject"] in set(subjects)]
    missing = sorted(set(subjects or ()) - {report["subject"] for report in reports})
    if missing:
        raise FileNotFoundError(f"no {QC_FILE} for the validation subject(s) {missing} in {qc_dir}.")
    model = None if model is None else str(model)
    calibration_rules = QCCalibration.from_reports(reports, margin, min_tolerance, model, min_residual)
    return calibration_rules.save(calibration, overwrite=overwrite)
