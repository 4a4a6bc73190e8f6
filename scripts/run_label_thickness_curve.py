"""How coarse may the labels be? Gap closed by the hybrid model against the label slab thickness.

For every thickness, a phantom study with labels in slabs of that thickness (``python -m pipeline.phantom
--label-thickness MM``; same subjects, images and 1 mm truth up to the grid's extension to whole slabs and the noise
drawn on it) is generated unless present; the supervised and the hybrid model of one loss setting are trained on it
for every seed (``run_paper_experiment.py``'s runs) and evaluated on its test subject against the exact truth. The
oracle trains on the 1 mm truth, which does not depend on the labels: it is trained once per seed (on the study of
``--oracle-thickness``) and only infers on every other study. Writes ``label_thickness_curve.csv`` (one row per
thickness x metric x map: :func:`pipeline.reports.experiment.experiment_table`'s columns, with the interpolated
labels as the ``labels`` yardstick), ``label_thickness_per_slice.csv``, ``label_thickness_curve.png`` (gap closed,
mean and standard deviation over seeds) and ``label_thickness_curve.json`` (command, commit, wall time). ``--merge``
folds in the thicknesses an earlier curve measured and this run did not, with that curve's record.

Usage::

    python scripts/run_label_thickness_curve.py --thicknesses 2 3.5 5 7 --seeds 0 1 2 --jobs 2 \\
        --acquisition realistic --set "slice_size=[208,192]"
    python scripts/run_label_thickness_curve.py --thicknesses 2 5 --seeds 0 1 \\
        --merge docs/results/default/label_thickness
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from run_paper_experiment import (  # noqa: E402
    SETTINGS,
    Run,
    evaluate,
    execute_all,
    labels_yardstick,
    parse_overrides,
    record,
)

from pipeline.engine import MODEL_CARD  # noqa: E402
from pipeline.reports.experiment import experiment_table  # noqa: E402

CURVE_METRICS = ("HFEN", "MPE", "SSIM")
"""Metrics plotted (gap closed, T1 and T2)."""
GAP_SHOWN = (-0.5, 1.5)
"""The plot's range of gap closed: where the oracle is barely better than the supervised model (thin slabs) the ratio
is ill-conditioned (e.g. +14 ± 20); such means are drawn at the range's edge with their value written beside."""


def study_dir(root: pathlib.Path, acquisition: str, thickness: float, default: float = 3.5) -> pathlib.Path:
    """``<root>/phantom_<acquisition>`` for the default thickness, ``..._label<T>mm`` for the others."""
    return (
        root / f"phantom_{acquisition}"
        if thickness == default
        else root / f"phantom_{acquisition}_label{thickness:g}mm"
    )


def ensure_study(folder: pathlib.Path, acquisition: str, thickness: float) -> dict:
    """Generate the study unless its manifest exists; returns the runs' data overrides."""
    manifest = folder / "dataset.json"
    if not manifest.exists():
        command = [sys.executable, "-m", "pipeline.phantom", "--out", str(folder), "--acquisition", acquisition,
                   "--label-thickness", f"{thickness:g}"]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO)
    return {"datalist": str(manifest), "dataset_dir": str(folder)}


def share_model(source_run: pathlib.Path, target_run: pathlib.Path) -> None:
    """Copy ``source_run``'s trained model and its card (:data:`MODEL_CARD`: the slices it was trained on, which
    inference reads) into ``target_run/models``, keeping any file already there."""
    for name in ("model.pt", MODEL_CARD):
        target = target_run / "models" / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_run / "models" / name, target)


MERGE_MUST_MATCH = ("seeds", "setting", "acquisition", "oracle_thickness", "overrides")
"""Arguments an earlier curve must share with this run to be merged: the same models on the same studies."""


def merge_earlier(
    folder: pathlib.Path, args: argparse.Namespace, table: pd.DataFrame, per_slice: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Add to this run's curve ``table`` and ``per_slice`` the thicknesses only the earlier curve in ``folder``
    measured; returns both, sorted by thickness, and the earlier curve's record (``label_thickness_curve.json``).

    Raises:
        ValueError: the earlier curve was made with other :data:`MERGE_MUST_MATCH` arguments (its record names them).
    """
    record_path = folder / "label_thickness_curve.json"
    earlier = json.loads(record_path.read_text())
    differ = [key for key in MERGE_MUST_MATCH if earlier["arguments"].get(key) != vars(args)[key]]
    if differ:
        raise ValueError(f"{record_path}: made with other {', '.join(differ)} than this run; it cannot be merged")
    ran = set(table["label_thickness_mm"])

    def with_earlier(ours: pd.DataFrame, file_name: str) -> pd.DataFrame:
        theirs = pd.read_csv(folder / file_name)
        joined = pd.concat([ours, theirs[~theirs["label_thickness_mm"].isin(ran)]], ignore_index=True)
        return joined.sort_values("label_thickness_mm", kind="stable").reset_index(drop=True)

    return (
        with_earlier(table, "label_thickness_curve.csv"),
        with_earlier(per_slice, "label_thickness_per_slice.csv"),
        earlier,
    )


def plot_curve(table: pd.DataFrame, path: pathlib.Path) -> None:
    """Gap closed (mean ± std over seeds) against the label thickness, one panel per metric, a line per map."""
    figure, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.6), sharey=True)
    for axis, metric in zip(axes, CURVE_METRICS):
        for map_name, rows in table[table["metric"] == metric].groupby("map"):
            rows = rows.sort_values("label_thickness_mm")
            shown = rows["gap_closed_mean"].clip(*GAP_SHOWN)
            axis.errorbar(rows["label_thickness_mm"], shown, yerr=rows["gap_closed_std"], marker="o", capsize=3,
                          label=map_name)  # fmt: skip
            for thickness, mean, edge in zip(rows["label_thickness_mm"], rows["gap_closed_mean"], shown):
                if mean != edge:
                    axis.annotate(f"{mean:+.1f}", (thickness, edge), textcoords="offset points",
                                  xytext=(6, -12 * (edge > 0)))  # fmt: skip
        axis.set_ylim(*GAP_SHOWN)
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set(title=f"{metric}", xlabel="label slab thickness (mm)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("gap to the oracle closed by the hybrid")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thicknesses", nargs="+", type=float, default=[2.0, 3.5, 5.0, 7.0])
    parser.add_argument("--oracle-thickness", type=float, default=3.5, help="study the oracle trains on")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--setting", default="default", choices=list(SETTINGS))
    parser.add_argument("--acquisition", default="realistic", choices=("ideal", "realistic"))
    parser.add_argument("--data-root", type=pathlib.Path, default=REPO / "data")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "runs" / "label_thickness")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--merge", type=pathlib.Path, help="an earlier curve's folder whose other thicknesses join")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    overrides = parse_overrides(args.overrides)
    args.out = args.out.resolve()

    def run(thickness, model, seed):
        folder = args.out / f"label{thickness:g}mm" / f"{model}_seed{seed}"
        return Run("cpu", args.setting, model, seed, "testing", folder, overrides)

    oracle_data = ensure_study(study_dir(args.data_root, args.acquisition, args.oracle_thickness), args.acquisition,
                               args.oracle_thickness)  # fmt: skip
    execute_all([run(args.oracle_thickness, "oracle", seed) for seed in args.seeds], oracle_data, args.jobs)
    tables, per_slices = [], []
    for thickness in args.thicknesses:
        data = ensure_study(study_dir(args.data_root, args.acquisition, thickness), args.acquisition, thickness)
        runs = [run(thickness, model, seed) for seed in args.seeds for model in ("supervised", "hybrid", "oracle")]
        for seed in args.seeds:  # the oracle's model, trained once, infers on this study
            share_model(run(args.oracle_thickness, "oracle", seed).run_dir, run(thickness, "oracle", seed).run_dir)
        per_slice, _ = evaluate(runs, execute_all(runs, data, args.jobs), [r.model for r in runs], data)
        per_slice = pd.concat([per_slice, labels_yardstick(args.out / f"label{thickness:g}mm", "testing", data,
                                                           args.seeds)], ignore_index=True)  # fmt: skip
        per_slices.append(per_slice.assign(label_thickness_mm=thickness))
        table = experiment_table(per_slice, "supervised", "hybrid", "oracle", labels="labels")
        tables.append(table.assign(label_thickness_mm=thickness))
    table, per_slice, merged = pd.concat(tables, ignore_index=True), pd.concat(per_slices, ignore_index=True), {}
    if args.merge:
        table, per_slice, earlier = merge_earlier(args.merge, args, table, per_slice)
        merged = {"merged": {"folder": str(args.merge), **earlier}}
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "label_thickness_curve.csv", index=False)
    per_slice.to_csv(args.out / "label_thickness_per_slice.csv", index=False)
    plot_curve(table, args.out / "label_thickness_curve.png")
    record(args.out, "label_thickness_curve", args, started, **merged)
    shown = ["label_thickness_mm", "metric", "map", "labels", "supervised", "hybrid", "oracle", "gap_closed_mean",
             "gap_closed_std", "hybrid_better_seeds", "p_value_max"]  # fmt: skip
    print(table[table["metric"].isin(CURVE_METRICS)][shown].to_string(index=False))


if __name__ == "__main__":
    main()
