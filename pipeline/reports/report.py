"""The evaluation entry point: predictions vs 1 mm references -> CSVs, Table-2 summary and PNG."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import pandas as pd

from pipeline.reports.evaluation import (
    DEFAULT_MIN_BRAIN_FRACTION,
    as_prediction_sets,
    load_test_subjects,
    per_slice_metrics,
)
from pipeline.reports.figure import plot_figure
from pipeline.reports.tables import per_subject_table, summary_table

REPORT_FILES = {
    "per_slice": "per_slice.csv",
    "per_subject": "per_subject.csv",
    "summary": "summary.csv",
    "figure": "figure.png",
}
"""The files written into ``output_dir``; any other file there is left untouched."""


def evaluate_predictions(
    datalist: str | os.PathLike,
    predictions: str | os.PathLike | Mapping[str, str | os.PathLike],
    output_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "testing",
    min_brain_fraction: float = DEFAULT_MIN_BRAIN_FRACTION,
    data_range: float | None = None,
    figure_subject: str | None = None,
    figure_slice: int | None = None,
) -> pd.DataFrame | None:
    """Evaluate one or two prediction sets against the reference maps of a manifest section.

    Writes ``REPORT_FILES`` into ``output_dir`` (created if needed): ``per_slice.csv``,
    ``per_subject.csv``, ``summary.csv`` and ``figure.png``. These are regenerated outputs: a previous
    run's files of these names are replaced; nothing else in ``output_dir`` is touched or deleted.
    Prints the summary and the written paths.

    In a ``torch.distributed`` run (``sharded_evaluate.json`` under ``torchrun``) every rank computes the per-slice
    metrics of its shard of the subjects and rank 0 gathers them and writes the same files as a one-process run
    (:func:`pipeline.reports.evaluation.per_slice_metrics`); the other ranks write and print nothing.

    Args:
        datalist: decathlon-style manifest whose ``section`` entries hold ``t1_ref``, ``t2_ref``, ``mask``
            (and ``t1w``, ``t2w``, ``flair`` for the figure).
        predictions: ``{model name: predictions dir}`` (one or two; two add paired t-tests), or a single
            predictions dir named after its folder. A dir holds ``<subject>/{t1,t2}_map.nii.gz`` in ms.
        output_dir: where the reports are written.
        dataset_dir: folder the manifest's paths are relative to; default :func:`pipeline.data.manifest_base_dir`.
        section: the manifest list to evaluate.
        min_brain_fraction: sagittal slices with a smaller fraction of brain-mask pixels are skipped.
        data_range: PSNR peak and SSIM dynamic range in units of 3 s; ``None``: per subject and map, the
            reference's maximum inside the brain mask.
        figure_subject: the subject shown in the figure; default the section's first.
        figure_slice: the sagittal slice shown (index along X in RAS); default the one with most brain.

    Returns:
        The summary table (see :func:`pipeline.reports.tables.summary_table`); ``None`` on the ranks other than 0 of
        a sharded run.
    """
    subjects = load_test_subjects(datalist, dataset_dir=dataset_dir, section=section)
    prediction_sets = as_prediction_sets(predictions)
    by_name = {entry["subject"]: entry for entry in subjects}
    figure_entry = subjects[0] if figure_subject is None else by_name.get(figure_subject)
    if figure_entry is None:
        raise ValueError(f"figure_subject {figure_subject!r} is not in the {section} list of {datalist}.")

    per_slice = per_slice_metrics(subjects, prediction_sets, min_brain_fraction, data_range)
    if per_slice is None:  # not rank 0 of a sharded run: rank 0 has the whole table and writes the reports
        return None
    summary = summary_table(per_slice)
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / file_name for name, file_name in REPORT_FILES.items()}
    per_slice.to_csv(paths["per_slice"], index=False)
    per_subject_table(per_slice).to_csv(paths["per_subject"], index=False)
    summary.to_csv(paths["summary"], index=False)
    plot_figure(figure_entry, prediction_sets, paths["figure"], slice_index=figure_slice)

    shown = ["metric", "map", *prediction_sets, *(["p_value"] if "p_value" in summary else [])]
    print(summary[shown].to_string(index=False, float_format=lambda p: f"{p:.3g}"))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return summary
