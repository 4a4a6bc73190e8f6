"""Which effect of the realistic acquisition costs the edge term the most? One effect at a time, no training.

For the ideal acquisition, each effect of :class:`pipeline.phantom.acquisition.Acquisition` alone, and the whole
realistic acquisition, a phantom study is generated (same seed, sagittal planes of one hemisphere to keep it
quick) and :mod:`diagnose_edge_loss` evaluates the robust setting's edge term (``edge_smoothing_sigma`` 1) on the
**validation** subject at the 1 mm truth and at the 3.5 mm labels, against the images as acquired (and clean:
no bias, no noise). The edge term helps where it is lower at the truth than at the labels; its ``discrimination``
``(labels - truth) / labels`` is the share of the labels' edge mismatch that the truth removes: 1 = the term points
straight at the truth, 0 = it cannot tell them apart. An effect that lowers it costs the hybrid its lever.

Usage::

    python scripts/diagnose_acquisition_effects.py [--planes 60] [--out docs/results/realistic]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import diagnose_edge_loss  # noqa: E402

from pipeline.phantom import generate_study  # noqa: E402
from pipeline.phantom.acquisition import Acquisition  # noqa: E402


def variants() -> dict[str, Acquisition]:
    """``ideal``, each effect alone, and ``realistic``."""
    alone = {effect: Acquisition(**{effect: True}) for effect in Acquisition.effects()}
    return {"ideal": Acquisition(), **alone, "realistic": Acquisition.preset("realistic")}


def diagnose(name: str, acquisition: Acquisition, planes: int, work: pathlib.Path) -> pd.DataFrame:
    """The edge-loss diagnosis (sigma 1) of the validation subject of ``acquisition``'s study."""
    study, csv = work / name, work / f"{name}.csv"
    if not csv.exists():  # a finished diagnosis is reused (delete the work folder after changing the phantom)
        manifest = generate_study(study, n_subjects=5, seed=0, sagittal_slices=planes, acquisition=acquisition)
        diagnose_edge_loss.main(
            ["--datalist", str(manifest), "--dataset_dir", str(study), "--sigmas", "1", "--out", str(csv)]
        )
    return pd.read_csv(csv).assign(acquisition=name)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per acquisition and image variant: truth and label edge terms (MPRAGE + TSE), discrimination."""
    wide = table.pivot_table(index=["acquisition", "images"], columns="maps", values="sum", sort=False)
    wide = wide.rename(columns={"truth (1 mm)": "truth", "labels (3.5 mm)": "labels"})[["truth", "labels"]]
    wide["discrimination"] = (wide["labels"] - wide["truth"]) / wide["labels"]
    return wide.reset_index()


def plot(summary: pd.DataFrame, path: pathlib.Path) -> None:
    """Two bar charts per acquisition (acquired and clean images): the truth's edge term (the floor the maps cannot
    explain: model mismatch, bias, noise) and the discrimination."""
    order = summary["acquisition"].unique()
    figure, panels = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for axes, column, label in zip(
        panels,
        ("truth", "discrimination"),
        ("edge term at the 1 mm truth (floor)", "discrimination (labels − truth) / labels"),
    ):
        pivot = summary.pivot(index="acquisition", columns="images", values=column).loc[order]
        pivot[["acquired", "clean"]].plot.barh(ax=axes, color=["tab:blue", "tab:gray"], legend=axes is panels[1])
        axes.axvline(float(pivot.loc["ideal", "acquired"]), color="tab:blue", linestyle=":", linewidth=1)
        axes.set_xlabel(label)
    panels[0].invert_yaxis()
    panels[1].legend(title="images", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle("Each acquisition effect alone (validation subject, robust edge term, sigma 1)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=60, help="sagittal planes of the studies (one hemisphere)")
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "runs" / "acquisition_effects")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "results" / "realistic")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.concat([diagnose(name, acquisition, args.planes, args.work) for name, acquisition in variants().items()])
    summary = summarise(table)
    table.to_csv(args.out / "acquisition_effects_edge_terms.csv", index=False)
    summary.to_csv(args.out / "acquisition_effects.csv", index=False)
    plot(summary, args.out / "acquisition_effects.png")
    print(summary.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
