"""Per-subject means and the paper's Table-2 summary (mean±std over slices, paired t-tests).

Both tables are built from the per-slice table of :func:`pipeline.reports.evaluation.per_slice_metrics`
(columns ``model, subject, slice, map`` and its ``METRICS``).
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import ttest_rel

from pipeline.reports.evaluation import METRICS

PER_SUBJECT_COLUMNS = ["model", "subject", "map", *METRICS]
"""Columns of :func:`per_subject_table` (``per_subject.csv``)."""

DECIMALS = {"MPE": 2, "HFEN": 2, "PSNR": 2, "SSIM": 3, "MPE_parenchyma": 2, "MAE_parenchyma_ms": 1}
"""Decimals of each metric's "mean±std" cell, as in the paper's Table 2."""


def per_subject_table(per_slice: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric over the evaluated slices of every model, subject and map."""
    return per_slice.groupby(["model", "subject", "map"], sort=False)[list(METRICS)].mean().reset_index()


def summary_table(per_slice: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2: one row per metric × map, statistics over all evaluated slices.

    Columns: ``metric``, ``map``, then per model (in order of appearance) a ``"<model>"`` column with the
    formatted ``"mean±std"``; with two models a ``p_value`` column (two-sided paired t-test,
    ``scipy.stats.ttest_rel``, over the slices evaluated for both, matched on subject and slice); then
    per model the numbers ``"<model>_mean"`` and ``"<model>_std"`` (sample standard deviation, ddof 1).

    Raises:
        ValueError: with more than two models (the paired test compares two).
    """
    models = list(per_slice["model"].unique())
    if len(models) > 2:
        raise ValueError(f"The summary compares one or two prediction sets, got {len(models)}: {models}.")
    rows = []
    for metric in METRICS:
        for map_name, map_slices in per_slice.groupby("map", sort=False):
            values = map_slices.pivot(index=["subject", "slice"], columns="model", values=metric)[models]
            mean, std = values.mean(), values.std()
            row = {"metric": metric, "map": map_name}
            decimals = DECIMALS[metric]
            row.update({model: f"{mean[model]:.{decimals}f}±{std[model]:.{decimals}f}" for model in models})
            if len(models) == 2:
                paired = values.dropna()
                row["p_value"] = ttest_rel(paired[models[0]], paired[models[1]]).pvalue
            for model in models:
                row.update({f"{model}_mean": mean[model], f"{model}_std": std[model]})
            rows.append(row)
    return pd.DataFrame(rows)
