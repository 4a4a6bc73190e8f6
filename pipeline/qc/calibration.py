"""QC thresholds calibrated on validation subjects, stored beside the model they were calibrated for.

The self-consistency figures (:mod:`pipeline.qc.consistency`) of correct maps are not zero: the loss's signal models
are simpler than a scanner (readout point-spread functions, B1+, receive fields, noise), and a network's maps are
smoother than the truth. What counts as *wrong* therefore depends on the model and the protocol, and is measured on
subjects whose maps are known to be good: the validation subjects (never the test subjects). Rules, per contrast:

* ``residual`` (one-sided): ``limit = max(margin * max over the validation subjects, min_residual)``;
* ``bias`` of each tissue and the ``grey_white`` contrast (two-sided): ``centre`` = the validation mean,
  ``tolerance = max(margin * largest validation departure from the centre, min_tolerance[figure])``;
* label-resolution MPE (one-sided, when the validation subjects have labels): ``limit = margin * max``.

The floors stand for what the model's maps of one validation subject cannot show: the spread between subjects, and
how far *right* maps may sit from the model's. A network's maps re-synthesise the images more closely than the truth
does (they are predicted from the same noisy images); calibrated on them alone, the limits flagged the exact maps of
every re-simulated case of the phantom's validation subject (residual 0.040 / 0.048 for the MPRAGE / TSE against limits
of 0.014 / 0.025; the TSE's CSF 0.10 from the model's). The default floors are chosen there (sub-04, bundle 0.12.0's
seed-0 model, ``docs/qc_guide.md``): the exact maps of its 15 cases pass, and maps frozen at the unchanged subject's
are flagged in 9 of its 12 cases of one changed tissue. CSF gets a wider floor: the QC's signal models depart most
from the acquisition there (long T1 and T2, partial volume with the dark tissue around it), by a few per cent that
differ between subjects (the exact maps' TSE CSF bias 0.085 on sub-04, 0.025 on sub-05).

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
DEFAULT_MIN_RESIDUAL = 0.06
"""Smallest residual limit (mean |residual| over the brain's mean intensity)."""
DEFAULT_MIN_TOLERANCE = {"csf": 0.15, "grey_matter": 0.06, "white_matter": 0.06, "grey_white": 0.06}
"""Smallest tolerated departure of each tissue's bias and of the grey/white contrast from the validation centre
(brain-median intensity units)."""
CONTRAST_NAMES = {"mprage": "T1w MPRAGE", "tse": "T2w TSE", "tse_epg": "T2w TSE", "flair": "T2w FLAIR"}
TISSUE_NAMES = {"csf": "CSF", "grey_matter": "grey matter", "white_matter": "white matter"}
Floors = float | Mapping[str, float]
LABEL_MPE_NAMES = {"t1_mpe_percent": "T1", "t2_mpe_percent": "T2"}


@dataclasses.dataclass
class QCCalibration:
    """Limits of the QC flags (module docstring).

    Attributes:
        thresholds: ``{contrast: {"residual": limit, "bias": {tissue: band}, "grey_white": band}}``, each band
            ``{"centre": c, "tolerance": t}`` (``grey_white`` absent from calibrations written before it existed).
        label_thresholds: ``{"t1_mpe_percent": limit, "t2_mpe_percent": limit}`` (%); empty without labels.
        margin, min_tolerance, min_residual: the rules' parameters (``min_tolerance``: one floor for every figure or
            ``{figure: floor}``).
        subjects: the validation subjects.
        validation: ``{subject: {"self_consistency": ..., "label_resolution": ...}}``: the values behind the limits.
        model: the checkpoint the validation maps were predicted with.
        protocols: ``{contrast: protocol fields}`` in force during calibration.
    """

    thresholds: dict
    label_thresholds: dict
    margin: float
    min_tolerance: Floors
    subjects: list
    validation: dict
    model: str | None = None
    protocols: dict = dataclasses.field(default_factory=dict)
    min_residual: float = 0.0

    @classmethod
    def from_reports(
        cls,
        reports: Sequence[Mapping],
        margin: float = DEFAULT_MARGIN,
        min_tolerance: Floors = DEFAULT_MIN_TOLERANCE,
        model: str | None = None,
        min_residual: float = DEFAULT_MIN_RESIDUAL,
    ) -> QCCalibration:
        """Limits from the ``qc.json`` records of validation subjects."""
        if not reports:
            raise ValueError("QC calibration needs the QC reports of at least one validation subject.")
        floors = dict(min_tolerance) if isinstance(min_tolerance, Mapping) else None
        if margin < 1 or min_residual < 0 or min(floors.values() if floors else [min_tolerance]) < 0:
            raise ValueError(
                f"the QC margin must be >= 1 and its floors >= 0, got {margin}, {min_tolerance}, {min_residual}."
            )
        contrasts = [sorted(report["self_consistency"]) for report in reports]
        if any(found != contrasts[0] for found in contrasts):
            raise ValueError(f"the validation reports check different contrasts: {contrasts}.")

        def band(figure: str, values: list[float]) -> dict:
            centre = sum(values) / len(values)
            departure = max(abs(value - centre) for value in values)
            floor = min_tolerance if floors is None else floors.get(figure, DEFAULT_MIN_TOLERANCE.get(figure, 0.0))
            return {"centre": centre, "tolerance": max(margin * departure, floor)}

        consistency = [report["self_consistency"] for report in reports]
        thresholds = {}
        for contrast in contrasts[0]:
            records = [values[contrast] for values in consistency]
            thresholds[contrast] = {
                "residual": max(margin * max(record["residual"] for record in records), min_residual),
                "bias": {
                    tissue: band(tissue, [record["bias"][tissue] for record in records])
                    for tissue in records[0]["bias"]
                },
            }
            if all("grey_white" in record for record in records):
                thresholds[contrast]["grey_white"] = band("grey_white", [record["grey_white"] for record in records])
        with_labels = [report["label_resolution"] for report in reports if report.get("label_resolution")]
        label_thresholds = {
            name: margin * max(values[name] for values in with_labels) for name in LABEL_MPE_NAMES if with_labels
        }
        return cls(
            thresholds=thresholds,
            label_thresholds=label_thresholds,
            margin=float(margin),
            min_tolerance=float(min_tolerance) if floors is None else floors,
            min_residual=float(min_residual),
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
                what = f"re-synthesised {TISSUE_NAMES.get(tissue, tissue)} is {{}} than acquired"
                flags += _band_flags(name, contrast, tissue, consistency[contrast]["bias"][tissue], band, what)
            if "grey_white" in limits:
                what = "the re-synthesised white matter is {} against grey matter than acquired"
                value = consistency[contrast]["grey_white"]
                flags += _band_flags(name, contrast, "grey_white", value, limits["grey_white"], what)
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


def _band_flags(name: str, contrast: str, region: str, value: float, band: Mapping, what: str) -> list[dict]:
    """``[flag]`` when ``value`` departs from ``band["centre"]`` by more than ``band["tolerance"]`` (NaN: beyond), else
    ``[]``; ``what`` is the message with ``{}`` for "brighter" or "darker"."""
    departure = value - band["centre"]
    if abs(departure) <= band["tolerance"]:
        return []
    message = (
        f"{name}: {what.format('brighter' if departure > 0 else 'darker')} by {abs(departure):.3f} of the brain's "
        f"median intensity beyond the validation subjects (tolerance {band['tolerance']:.3f})"
    )
    return [
        {
            "check": "self_consistency",
            "contrast": contrast,
            "tissue": region,
            "value": value,
            "threshold": band["tolerance"],
            "centre": band["centre"],
            "message": message,
        }
    ]
