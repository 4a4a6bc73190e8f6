"""Two runs of the paper experiment side by side (e.g. the default trained in fp32 and in bf16): per Table-2 cell and
model, the means over seeds, the difference and whether it lies within the seed spread, and the candidate run's own
Table-2 claim (seeds won, largest paired-test p).

    python scripts/compare_experiments.py docs/results/default/realistic runs/bf16_realistic \
        --names fp32 bf16 [--out docs/results/precision]

Each folder holds a ``table2.csv`` of ``scripts/run_paper_experiment.py run``. Prints a Markdown table; with ``--out``
also writes ``comparison.csv`` there.
"""

from __future__ import annotations

import argparse
import pathlib

import pandas as pd

from pipeline.reports.evaluation import METRICS
from pipeline.reports.experiment import compare_experiments
from pipeline.reports.tables import DECIMALS

TABLE2_METRICS = ("MPE", "HFEN", "PSNR", "SSIM")
"""The paper's Table-2 cells (the parenchyma rows are in ``comparison.csv``)."""


def markdown(comparison: pd.DataFrame, names: tuple[str, str]) -> str:
    header = ["metric", "map", "model", f"{names[0]} (mean ± seed std)", f"{names[1]}", "difference", "within spread",
              f"{names[1]}: hybrid better (seeds), p max"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in comparison[comparison["metric"].isin(TABLE2_METRICS)].iterrows():
        digits = DECIMALS[row["metric"]] + 1
        sides = [
            f"{row[f'{s}_mean']:.{digits}f} ± {row[f'{s}_seed_std']:.{digits}f}" for s in ("reference", "candidate")
        ]
        claim = (
            f"{row['hybrid_better_seeds']}/{row['seeds']}, {row['p_value_max']:.1e}" if row["model"] == "hybrid" else ""
        )
        cells = [row["metric"], row["map"], row["model"], *sides, f"{row['difference']:+.{digits}f}",
                 "yes" if row["within_spread"] else "**no**", claim]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=pathlib.Path, help="folder with the reference run's table2.csv")
    parser.add_argument("candidate", type=pathlib.Path, help="folder with the candidate run's table2.csv")
    parser.add_argument("--names", nargs=2, default=("reference", "candidate"))
    parser.add_argument("--out", type=pathlib.Path, help="folder for comparison.csv")
    args = parser.parse_args()
    tables = [pd.read_csv(folder / "table2.csv") for folder in (args.reference, args.candidate)]
    comparison = compare_experiments(*tables)
    comparison = comparison[comparison["metric"].isin(METRICS)]
    print(markdown(comparison, tuple(args.names)))
    hybrid = comparison[(comparison["model"] == "hybrid") & comparison["metric"].isin(TABLE2_METRICS)]
    print(
        f"\n{int(comparison['within_spread'].sum())}/{len(comparison)} model x cell means within the seed spread; "
        f"{args.names[1]}: hybrid better in every seed on {int((hybrid['hybrid_better_seeds'] == hybrid['seeds']).sum())}/"
        f"{len(hybrid)} Table-2 cells, p < 0.05 in every seed on {int((hybrid['p_value_max'] < 0.05).sum())}."
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        comparison.to_csv(args.out / "comparison.csv", index=False)


if __name__ == "__main__":
    main()
