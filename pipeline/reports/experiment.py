"""The paper experiment's tables: Table 2 with an oracle column and the fraction of the gap closed, over seeds.

Input is the per-slice table of :func:`pipeline.reports.evaluation.per_slice_metrics` for every training seed,
with a ``seed`` column added (columns ``seed, model, subject, slice, map, MPE, HFEN, PSNR, SSIM``). The models
are the supervised baseline (3.5 mm labels, lambda = 0), the hybrid model (3.5 mm labels, lambda > 0) and the
oracle (1 mm labels, lambda = 0).

Fraction of the gap closed, per seed and cell: ``(supervised - hybrid) / (supervised - oracle)`` of the slice
means: 1 = the hybrid model is as good as training on 1 mm labels, 0 = no better than supervised, < 0 = worse.
It is the same for metrics where lower is better (MPE, HFEN) and higher is better (PSNR, SSIM).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

from pipeline.reports.evaluation import METRICS
from pipeline.reports.tables import DECIMALS

HIGHER_IS_BETTER = {
    "MPE": False,
    "HFEN": False,
    "PSNR": True,
    "SSIM": True,
    "MPE_parenchyma": False,
    "MAE_parenchyma_ms": False,
}
"""Direction of each metric."""


def _seed_means(per_slice: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Slice means of ``metric`` per seed (rows) and model (columns) of one map's slices."""
    return per_slice.groupby(["seed", "model"])[metric].mean().unstack("model")


def _paired(per_slice: pd.DataFrame, metric: str, seed, models: Sequence[str]) -> pd.DataFrame:
    """One seed's per-slice values of ``metric``, a column per model, rows matched on subject and slice."""
    of_seed = per_slice[per_slice["seed"] == seed]
    return of_seed.pivot(index=["subject", "slice"], columns="model", values=metric)[list(models)].dropna()


def experiment_table(
    per_slice: pd.DataFrame, supervised: str, hybrid: str, oracle: str | None, labels: str | None = None
) -> pd.DataFrame:
    """Table 2 of the paper with the oracle and the fraction of the gap closed, over seeds.

    One row per metric (of ``METRICS`` present in ``per_slice``) × map. Columns:

    - ``metric``, ``map``;
    - for ``supervised``, ``hybrid`` and ``oracle`` (these column names, whatever the models are called): a
      formatted ``"mean±std"`` cell, the mean over seeds of the slice means (``<column>_mean``), the standard
      deviation over slices averaged over seeds (``<column>_slice_std``, the paper's ±) and the standard deviation
      of the seed means (``<column>_seed_std``);
    - ``p_value_max``, ``p_value_median``: two-sided paired t-tests (``scipy.stats.ttest_rel``) of hybrid vs
      supervised over the slices of each seed, the largest and the median over seeds;
    - ``hybrid_better_seeds``: in how many seeds the hybrid mean is better than the supervised one;
    - ``gap_closed_mean``, ``gap_closed_std``: the fraction of the gap closed (module docstring) per seed, mean
      and standard deviation over seeds (NaN for a seed where supervised and oracle means are equal); without an
      ``oracle`` (e.g. models of an ablation) neither these nor the ``oracle`` columns;
    - ``seeds``: the number of seeds;
    - with ``labels``: the same ``labels``, ``labels_mean``, ... columns for that yardstick (e.g. the interpolated
      low-resolution labels, :mod:`pipeline.reports.yardsticks`; rows for every seed, identical when it has no seed).

    Args:
        per_slice: per-slice metrics of every seed and model (module docstring).
        supervised, hybrid, oracle: the three models' names in ``per_slice["model"]`` (``oracle`` may be None).
        labels: optional name of a yardstick in ``per_slice["model"]``.
    """
    models = {"supervised": supervised, "hybrid": hybrid} | {
        column: model for column, model in (("oracle", oracle), ("labels", labels)) if model
    }
    missing = sorted(set(models.values()) - set(per_slice["model"]))
    if missing:
        raise ValueError(f"per_slice has no rows of model(s) {missing}; it has {sorted(per_slice['model'].unique())}.")
    seeds = sorted(per_slice["seed"].unique())
    rows = []
    for metric in [metric for metric in METRICS if metric in per_slice]:  # tables of older runs lack some
        for map_name, map_slices in per_slice.groupby("map", sort=False):
            means = _seed_means(map_slices, metric)
            slice_std = map_slices.groupby(["seed", "model"])[metric].std().unstack("model").mean()
            row = {"metric": metric, "map": map_name}
            for column, model in models.items():
                mean = means[model].mean()
                row[column] = f"{mean:.{DECIMALS[metric]}f}±{slice_std[model]:.{DECIMALS[metric]}f}"
                row.update(
                    {
                        f"{column}_mean": mean,
                        f"{column}_slice_std": slice_std[model],
                        f"{column}_seed_std": means[model].std(),
                    }
                )
            p_values = [
                ttest_rel(*_paired(map_slices, metric, seed, (hybrid, supervised)).to_numpy().T).pvalue
                for seed in seeds
            ]
            improvement = (means[hybrid] - means[supervised]) * (1 if HIGHER_IS_BETTER[metric] else -1)
            row.update(
                {
                    "p_value_max": max(p_values),
                    "p_value_median": float(np.median(p_values)),
                    "hybrid_better_seeds": int((improvement > 0).sum()),
                }
            )
            if oracle:
                gap = (means[supervised] - means[hybrid]) / (means[supervised] - means[oracle]).replace(0.0, np.nan)
                row.update({"gap_closed_mean": gap.mean(), "gap_closed_std": gap.std()})
            row["seeds"] = len(seeds)
            rows.append(row)
    return pd.DataFrame(rows)
