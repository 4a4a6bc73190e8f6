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


def compare_experiments(
    reference: pd.DataFrame, candidate: pd.DataFrame, models: Sequence[str] = ("supervised", "hybrid", "oracle")
) -> pd.DataFrame:
    """Two runs of the same experiment side by side (e.g. fp32 and bf16 training): per cell and model, the means over
    seeds, their seed spreads and whether the difference lies within them.

    Args:
        reference, candidate: :func:`experiment_table` outputs (``table2.csv``) over the same metrics and maps.
        models: the model columns to compare (those missing from either table are left out).

    Returns:
        One row per metric × map × model: ``metric``, ``map``, ``model``, ``reference_mean``, ``reference_seed_std``,
        ``candidate_mean``, ``candidate_seed_std``, ``difference`` (candidate − reference), ``spread`` (the larger of
        the two seed standard deviations) and ``within_spread`` (``|difference| <= spread``); then the candidate's
        ``hybrid_better_seeds``, ``p_value_max`` and ``seeds`` of that cell (its Table-2 claim).

    Raises:
        ValueError: when the tables do not hold the same metric × map cells.
    """
    cells = ["metric", "map"]
    if set(map(tuple, reference[cells].to_numpy())) != set(map(tuple, candidate[cells].to_numpy())):
        raise ValueError("the two experiment tables hold different metric x map cells; compare runs of one experiment.")
    joined = reference.merge(candidate, on=cells, suffixes=("_reference", "_candidate"))
    rows = []
    for _, cell in joined.iterrows():
        for model in [m for m in models if f"{m}_mean" in reference and f"{m}_mean" in candidate]:
            means = {side: cell[f"{model}_mean_{side}"] for side in ("reference", "candidate")}
            stds = {side: cell[f"{model}_seed_std_{side}"] for side in ("reference", "candidate")}
            difference, spread = means["candidate"] - means["reference"], max(stds.values())
            rows.append(
                {
                    "metric": cell["metric"],
                    "map": cell["map"],
                    "model": model,
                    **{f"{side}_mean": means[side] for side in means},
                    **{f"{side}_seed_std": stds[side] for side in stds},
                    "difference": difference,
                    "spread": spread,
                    "within_spread": bool(abs(difference) <= spread),
                    "hybrid_better_seeds": cell["hybrid_better_seeds_candidate"],
                    "p_value_max": cell["p_value_max_candidate"],
                    "seeds": cell["seeds_candidate"],
                }
            )
    return pd.DataFrame(rows)
