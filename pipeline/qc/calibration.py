"""QC thresholds calibrated on validation subjects, stored beside the model they were calibrated for.

The self-consistency figures (:mod:`pipeline.qc.consistency`) of correct maps are not zero: the loss's signal models
are simpler than a scanner (readout point-spread functions, B1+, receive fields, noise), and a network's maps are
smoother than the truth. What counts as *wrong* therefore depends on the model and the protocol, and is measured on
subjects whose maps are known to be good: the validation subjects (never the test subjects). Rules, per contrast:

* ``residual`` (one-sided): ``limit = margin * max`` over the validation subjects;
* ``bias`` of each tissue (two-sided): ``centre`` = the validation mean, ``tolerance = max(margin * largest validation
  departure from the centre, min_tolerance)``; ``min_tolerance`` (in units of the brain's median intensity) stands for
  the spread between subjects that a single validation subject cannot show;
* label-resolution MPE (one-sided, when the validation subjects have labels): ``limit = margin * max``.

A subject beyond a limit is flagged with the check, the contrast, the tissue and the size of the disagreement. The
file (``qc_calibration.json``) records the rules, the subjects, their values and the model, so a flag can be traced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence

from pipeline.files import write_atomically

DEFAULT_MARGIN = 2.0
"""Limits over the largest validation value (or departure)."""
DEFAULT_MIN_TOLERANCE = 0.06
"""Smallest tolerated departure of a tissue's bias from the validation centre (brain-median intensity units)."""
CONTRAST_NAMES = {"mprage": "T1w MPRAGE", "tse": "T2w TSE", "tse_epg": "T2w TSE", "flair": "T2w FLAIR"}
TISSUE_NAMES = {"csf": "CSF", "grey_matter": "grey matter", "white_matter": "white matter"}
LABEL_MPE_NAMES = {"t1_mpe_percent": "T1", "t2_mpe_percent": "T2"}


@dataclasses.dataclass
class QCCalibration:
    """Limits of the QC flags (module docstring).

    Attributes:
        thresholds: ``{contrast: {"residual": limit, "bias": {tissue: {"centre": c, "tolerance": t}}}}``.
        label_thresholds: ``{"t1_mpe_percent": limit, "t2_mpe_percent": limit}`` (%); empty without labels.
        margin, min_tolerance: the rules' parameters.
        subjects: the validation subjects.
        validation: ``{subject: {"self_consistency": ..., "label_resolution": ...}}``: the values behind the limits.
        model: the checkpoint the validation maps were predicted with.
        protocols: ``{contrast: protocol fields}`` in force during calibration.
    """

    thresholds: dict
    label_thresholds: dict
    margin: float
    min_tolerance: float
    subjects: list
    validation: dict
    model: str | None = None
    protocols: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_reports(
        cls,
        reports: Sequence[Mapping],
        margin: float = DEFAULT_MARGIN,
        min_tolerance: float = DEFAULT_MIN_TOLERANCE,
        model: str | None = None,
    ) -> QCCalibration:
        """Limits from the ``qc.json`` records of validation subjects."""
        if not reports:
            raise ValueError("QC calibration needs the QC reports of at least one validation subject.")
        if margin < 1 or min_tolerance < 0:
            raise ValueError(f"the QC margin must be >= 1 and min_tolerance >= 0, got {margin}, {min_tolerance}.")
        contrasts = [sorted(report["self_consistency"]) for report in reports]
        if any(found != contrasts[0] for found in contrasts):
            raise ValueError(f"the validation reports check different contrasts: {contrasts}.")

        def bias_band(values: list[float]) -> dict:
            centre = sum(values) / len(values)
            departure = max(abs(value - centre) for value in values)
            return {"centre": centre, "tolerance": max(margin * departure, min_tolerance)}

        consistency = [report["self_consistency"] for report in reports]
        thresholds = {
            contrast: {
                "residual": margin * max(values[contrast]["residual"] for values in consistency),
                "bias": {
                    tissue: bias_band([values[contrast]["bias"][tissue] for values in consistency])
                    for tissue in consistency[0][contrast]["bias"]
                },
            }
            for contrast in contrasts[0]
        }
        with_labels = [report["label_resolution"] for report in reports if report.get("label_resolution")]
        label_thresholds = {
            name: margin * max(values[name] for values in with_labels) for name in LABEL_MPE_NAMES if with_labels
        }
        return cls(
            thresholds=thresholds,
            label_thresholds=label_thresholds,
            margin=float(margin),
            min_tolerance=float(min_tolerance),
            subjects=[report["subject"] for report in reports],
            validation={
                report["subject"]: {key: report.get(key) for key in ("self_consistency", "label_resolution")}
                for report in reports
            },
            model=model,
            protocols=dict(reports[0].get("protocols", {})),
        )

    def flags(self, consistency: Mapping, label_resolution: Mapping | None = None) -> list[dict]:
        """One flag per figure beyond its limit (NaN counts as beyond)."""
        missing = sorted(set(self.thresholds) - set(consistency))
        if missing:
            raise ValueError(f"the QC calibration has limits for contrasts {missing} that were not checked.")
        flags = []
        for contrast, limits in self.thresholds.items():
            name = CONTRAST_NAMES.get(contrast, contrast)
            value = consistency[contrast]["residual"]
            if not value <= limits["residual"]:
                flags.append(
                    {
                        "check": "self_consistency",
                        "contrast": contrast,
                        "tissue": "brain",
                        "value": value,
                        "threshold": limits["residual"],
                        "message": f"{name}: the maps re-synthesise the acquired image with a residual of {value:.3f} "
                        f"(calibrated limit {limits['residual']:.3f}, x{value / limits['residual']:.1f})",
                    }
                )
            for tissue, band in limits["bias"].items():
                value = consistency[contrast]["bias"][tissue]
                departure = value - band["centre"]
                if not abs(departure) <= band["tolerance"]:
                    flags.append(
                        {
                            "check": "self_consistency",
                            "contrast": contrast,
                            "tissue": tissue,
                            "value": value,
                            "threshold": band["tolerance"],
                            "centre": band["centre"],
                            "message": f"{name}: re-synthesised {TISSUE_NAMES.get(tissue, tissue)} is "
                            f"{'brighter' if departure > 0 else 'darker'} than acquired by {abs(departure):.3f} of the "
                            f"brain's median intensity beyond the validation subjects (tolerance {band['tolerance']:.3f})",
                        }
                    )
        for name, limit in self.label_thresholds.items() if label_resolution else ():
            value = label_resolution[name]
            if not value <= limit:
                flags.append(
                    {
                        "check": "label_resolution",
                        "map": name.split("_")[0],
                        "value": value,
                        "threshold": limit,
                        "message": f"{LABEL_MPE_NAMES[name]} degraded to the labels' resolution differs from the "
                        f"labels by {value:.1f} % (calibrated limit {limit:.1f} %)",
                    }
                )
        return flags

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
        """Write the calibration as JSON (atomically); an existing file raises unless ``overwrite``."""
        path = pathlib.Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"refusing to overwrite the QC calibration {path}; pass --overwrite true.")
        return write_atomically(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> QCCalibration:
        """Read a calibration written by :meth:`save`; a clear error names a missing or malformed file."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no QC calibration at {path}: run the bundle's 'calibrating' command for this model first."
            )
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path} is not a QC calibration written by pipeline.qc: {error}") from error
