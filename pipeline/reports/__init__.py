"""Evaluation reports: per-slice / per-subject CSVs, the Table-2 summary with paired t-tests, Figure 2.

* :mod:`pipeline.reports.evaluation` -- reading predictions and references, per-slice metrics.
* :mod:`pipeline.reports.tables` -- per-subject means and the Table-2 summary.
* :mod:`pipeline.reports.figure` -- the Figure-2 PNG.
* :mod:`pipeline.reports.report` -- :func:`evaluate_predictions`, what the ``evaluating`` bundle step calls.
* :mod:`pipeline.reports.experiment` -- the paper experiment's table over seeds (oracle, gap closed, yardstick).
* :mod:`pipeline.reports.yardsticks` -- the interpolated low-resolution labels written as a prediction set.
"""

from pipeline.reports.evaluation import (
    METRICS,
    PER_SLICE_COLUMNS,
    as_prediction_sets,
    load_test_subjects,
    per_slice_metrics,
    read_ras,
    slice_metrics,
)
from pipeline.reports.figure import plot_figure
from pipeline.reports.report import REPORT_FILES, evaluate_predictions
from pipeline.reports.tables import PER_SUBJECT_COLUMNS, per_subject_table, summary_table

__all__ = [
    "METRICS",
    "PER_SLICE_COLUMNS",
    "PER_SUBJECT_COLUMNS",
    "REPORT_FILES",
    "as_prediction_sets",
    "evaluate_predictions",
    "load_test_subjects",
    "per_slice_metrics",
    "per_subject_table",
    "plot_figure",
    "read_ras",
    "slice_metrics",
    "summary_table",
]
