#!/usr/bin/env python
"""The response benchmark: the test subject re-simulated with one tissue's T1, T2 or PD scaled; do the maps follow?

    python scripts/run_response_benchmark.py --experiment runs/experiment --out docs/results/response
    python scripts/run_response_benchmark.py --model hybrid=runs/phantom_study/hybrid/models/model.pt \
        --model supervised=runs/phantom_study/supervised/models/model.pt --out runs/response

1. writes the study's testing subject once per case (:mod:`pipeline.phantom.changes`; ``--work``, reused when the
   cases are the same): the unchanged reference, white matter, cortical grey, deep grey and all tissue but CSF with
   T1, T2 or PD x 0.7, 0.85, 1.15, 1.3, and lesions outside the training range;
2. infers every model on every case with the bundle's own inference command (``--amp`` its precision; QC and the
   input validation off: the benchmark asks what the maps do, not whether the inputs look usual);
3. measures what the network is shown (``inputs.csv``: each weighted image's change in the changed tissue, as
   acquired and after each intensity reference of the pipeline) and each case's maps
   (:mod:`pipeline.reports.response`), and writes ``response.csv`` (per model, seed, case, map), ``table2.csv``
   (Table 2's metrics on the unchanged subject: the accuracy the response costs or gains),
   ``slopes.csv`` (per model, seed, tissue, parameter), ``response.png``, ``response.json`` (command, commits, wall
   time), and prints the slopes table (mean ± sd over seeds).

Models: ``--experiment DIR`` takes every ``DIR/runs/<setting>/<model>_seed<k>/models/model.pt`` of
:mod:`run_paper_experiment`; ``--model NAME=CHECKPOINT`` adds one (seed 0); ``--adapt NAME=CHECKPOINT [KEY=VALUE ...]``
one adapted to each case's own images by the bundle's ``adapting`` command with these overrides of ``adapt.json``. ``--maps NAME=DIR`` adds maps already
written for every case; ``--dictionary labels images`` the ideal observer's rows (:mod:`pipeline.dictionary`: a
per-voxel fit of the three images with the study's signal models, each image's gain from the subject's labels or from
the images alone).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import time

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # run_paper_experiment's helpers

from run_paper_experiment import REPO, record, run_bundle

from pipeline.data import IMAGE_KEYS, INTENSITY_REFERENCES, MASK_KEY, load_datalist
from pipeline.data.normalization import intensity_normalisation
from pipeline.phantom.changes import read_fractions, write_tissue_changes
from pipeline.phantom.contrasts import protocol_overrides, protocols
from pipeline.phantom.tissues import TISSUE_PARAMETERS
from pipeline.reports.evaluation import load_test_subjects, per_slice_metrics, read_ras
from pipeline.reports.yardsticks import GAIN_SOURCES, write_dictionary_fit
from pipeline.reports.response import (
    MAP_OF_PARAMETER,
    REFERENCE_CASE,
    RESPONSE_FACTORS,
    TISSUE_GROUPS,
    case_response,
    mean_change_pct,
    response_cases,
    response_slopes,
    tissue_voxels,
)

SEED_RUN = re.compile(r"(?P<model>.+)_seed(?P<seed>\d+)$")


def experiment_models(experiment: pathlib.Path) -> list[tuple[str, int, pathlib.Path]]:
    """``(model, seed, checkpoint)`` of every trained run of a :mod:`run_paper_experiment` output folder: ``run``'s
    ``runs/<setting>/<model>_seed<k>`` (named ``<model>``, ``<model>_<setting>`` outside the default setting) and
    ``ablate``'s ``runs/<variant>_<model>_seed<k>`` (named ``<variant>_<model>``). A run is finished when its maps
    are (``maps_<section>/done``): ``model.pt`` is written by every validation that improves, during training too."""
    models = []
    runs = experiment.glob("runs/*/*_seed*/models/model.pt")
    ablations = experiment.glob("runs/*_seed*/models/model.pt")
    finished = [checkpoint for checkpoint in [*runs, *ablations] if any(checkpoint.parents[1].glob("maps_*/done"))]
    for checkpoint in sorted(finished):
        match = SEED_RUN.match(checkpoint.parents[1].name)
        setting = checkpoint.parents[2].name
        name = match["model"] if setting in ("default", "runs") else f"{match['model']}_{setting}"
        models.append((name, int(match["seed"]), checkpoint))
    return models


def named_paths(pairs: list[str], flag: str) -> list[tuple[str, pathlib.Path]]:
    """``NAME=PATH`` arguments as ``(name, path)``."""
    parsed = [pair.partition("=") for pair in pairs]
    if any(not (name and equals and path) for name, equals, path in parsed):
        raise SystemExit(f"{flag} expects NAME=PATH, got {pairs}")
    return [(name, pathlib.Path(path)) for name, _, path in parsed]


def infer(
    checkpoint: pathlib.Path,
    cases_manifest: pathlib.Path,
    maps_dir: pathlib.Path,
    amp: str,
    adaptation: dict | None = None,
) -> None:
    """The bundle's inference of every case (skipped when ``maps_dir/done`` exists); with ``adaptation`` (overrides of
    ``adapt.json``, e.g. ``{"adapt_lambda_intensity": 1.0}``) its adaptation to each case's images first
    (:mod:`pipeline.adaptation`, which needs the QC on to judge the maps)."""
    if (maps_dir / "done").exists():
        return
    overrides = {
        "datalist": cases_manifest,
        "dataset_dir": cases_manifest.parent,
        "checkpoint": checkpoint,
        "output_dir": maps_dir,
        "overwrite": True,
        "qc": adaptation is not None,
        "qc_report": False,
        "check_inputs": False,
        "amp": amp,
        **(adaptation or {}),
    }
    run_bundle(
        "inference" if adaptation is None else "adapting",
        ["inference.json"] if adaptation is None else ["inference.json", "adapt.json"],
        overrides,
        maps_dir.parent / f"{maps_dir.name}.log",
        threads=os.cpu_count() or 1,
    )
    (maps_dir / "done").touch()


def read_maps(folder: pathlib.Path) -> dict[str, np.ndarray]:
    """``{t1_map, t2_map, m0_map}`` of a case folder: a model's maps, or the 1 mm truth of a case's own folder."""
    return {name: read_ras(folder / f"{name}.nii.gz") for name in MAP_OF_PARAMETER.values()}


def measure(cases, cases_dir: pathlib.Path, maps: list[tuple[str, int, pathlib.Path]]) -> pd.DataFrame:
    """Rows of :func:`case_response` for every model and case, with ``model, seed, case, group, parameter``."""
    fractions = read_fractions(cases_dir)
    truth = {case.name: read_maps(cases_dir / case.name) for case in cases}
    voxels = {group: tissue_voxels(fractions, group) for group in {case.group for case in cases[1:]}}
    tables = []
    for model, seed, folder in maps:
        predicted = {case.name: read_maps(folder / case.name) for case in cases}
        for case in cases[1:]:
            table = case_response(
                case,
                predicted[case.name],
                predicted[REFERENCE_CASE],
                truth[case.name],
                truth[REFERENCE_CASE],
                voxels[case.group],
            )
            parameter = "+".join(parameter for parameter, _ in case.factors)
            factor = "+".join(f"{factor:g}" for _, factor in case.factors)
            tables.append(
                table.assign(
                    model=model, seed=seed, case=case.name, group=case.group, parameter=parameter, factor=factor
                )
            )
    columns = ["model", "seed", "case", "group", "parameter", "factor"]
    responses = pd.concat(tables, ignore_index=True)
    return responses[columns + [c for c in responses if c not in columns]]


def inputs_seen(cases, cases_manifest: pathlib.Path) -> pd.DataFrame:
    """What the network is shown: each weighted image's mean relative change (%) in the changed tissue, as acquired
    (``raw``) and after each intensity reference of the pipeline
    (:data:`~pipeline.data.normalization.INTENSITY_REFERENCES`), one row per case and image."""
    entries = {entry["subject"]: entry for entry in load_datalist(cases_manifest, "testing")}
    fractions = read_fractions(cases_manifest.parent)
    voxels = {group: tissue_voxels(fractions, group) for group in {case.group for case in cases[1:]}}

    def images(name: str, reference: str | None) -> dict[str, np.ndarray]:
        data = {key: torch.as_tensor(read_ras(entries[name][key]))[None] for key in (*IMAGE_KEYS, MASK_KEY)}
        for normalise in intensity_normalisation(reference) if reference else ():
            data = normalise(data)
        return {key: data[key][0].numpy() for key in IMAGE_KEYS}

    references = (None, *INTENSITY_REFERENCES)
    before = {reference: images(REFERENCE_CASE, reference) for reference in references}
    rows = []
    for case in cases[1:]:
        after = {reference: images(case.name, reference) for reference in references}
        for key in IMAGE_KEYS:
            changes = {
                f"{reference or 'raw'}_change_pct": mean_change_pct(
                    after[reference][key], before[reference][key], voxels[case.group]
                )
                for reference in references
            }
            rows.append({"case": case.name, "group": case.group, "image": key, **changes})
    return pd.DataFrame(rows)


def reference_metrics(cases_manifest: pathlib.Path, maps: list[tuple[str, int, pathlib.Path]]) -> pd.DataFrame:
    """Table 2's metrics (MPE, HFEN, PSNR, SSIM of T1 and T2, slice means) of each model on the unchanged subject:
    the accuracy that the response is bought with, one row per model and seed."""
    subjects = [s for s in load_test_subjects(cases_manifest) if s["subject"] == REFERENCE_CASE]
    tables = []
    for model, seed, folder in maps:
        per_slice = per_slice_metrics(subjects, {model: folder})
        means = per_slice.groupby("map")[["MPE", "HFEN", "PSNR", "SSIM"]].mean().unstack()
        tables.append(pd.DataFrame([means.values], columns=[f"{map}_{metric}" for metric, map in means.index]))
        tables[-1].insert(0, "seed", seed)
        tables[-1].insert(0, "model", model)
    return pd.concat(tables, ignore_index=True)


def slopes_table(slopes: pd.DataFrame) -> pd.DataFrame:
    """Slopes as ``mean ± sd`` over seeds: one row per tissue and parameter, one column per model."""
    stats = slopes.groupby(["group", "parameter", "model"])["slope"].agg(["mean", "std", "count"])
    text = stats.apply(lambda row: f"{row['mean']:.2f}" + (f" ± {row['std']:.2f}" if row["count"] > 1 else ""), axis=1)
    return text.unstack("model")


def plot(responses: pd.DataFrame, path: pathlib.Path) -> None:
    """Predicted against true relative change (changed maps), a panel per parameter (rows) and tissue (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in TISSUE_GROUPS if g in set(responses["group"])]
    parameters = [p for p in TISSUE_PARAMETERS if p in set(responses["parameter"])]
    figure, axes = plt.subplots(
        len(parameters), len(groups), figsize=(3.2 * len(groups), 3.0 * len(parameters)), squeeze=False
    )
    changed = responses[responses["changed"]]
    for row, parameter in enumerate(parameters):
        for column, group in enumerate(groups):
            axis = axes[row, column]
            cases = changed[(changed["group"] == group) & (changed["parameter"] == parameter)]
            limit = cases["true_change_pct"].abs().max() * 1.1
            axis.plot([-limit, limit], [-limit, limit], "k--", lw=0.8, label="identity")
            for model, by_model in cases.groupby("model"):
                stats = by_model.groupby("true_change_pct")["predicted_change_pct"].agg(["mean", "std"]).fillna(0)
                axis.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", ms=3, capsize=2, label=model)
            axis.set_title(f"{group} {parameter}", fontsize=9)
            axis.set_xlabel("true change (%)", fontsize=8)
            axis.set_ylabel(f"predicted {MAP_OF_PARAMETER[parameter]} change (%)", fontsize=8)
            axis.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=pathlib.Path, default=REPO / "data" / "phantom_realistic" / "dataset.json")
    parser.add_argument("--experiment", type=pathlib.Path, action="append", default=[])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT")
    parser.add_argument("--maps", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument(
        "--adapt",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT [KEY=VALUE ...]",
        help="a row of the model adapted to each case's own images (adapt.json, with these overrides) before inference",
    )
    parser.add_argument(
        "--dictionary",
        nargs="*",
        default=[],
        choices=GAIN_SOURCES,
        help="rows of the per-voxel dictionary fit (the ideal observer) with each image's gain from the labels or "
        "from the images alone",
    )
    parser.add_argument(
        "--section",
        default="testing",
        choices=("testing", "validation"),
        help="the study's subject to re-simulate (validation: to choose between levers)",
    )
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "data" / "response")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--groups", nargs="+", default=list(TISSUE_GROUPS), choices=list(TISSUE_GROUPS))
    parser.add_argument("--parameters", nargs="+", default=list(TISSUE_PARAMETERS), choices=list(TISSUE_PARAMETERS))
    parser.add_argument("--factors", nargs="+", type=float, default=list(RESPONSE_FACTORS))
    parser.add_argument("--no-lesions", action="store_true", help="leave out the lesion cases")
    parser.add_argument("--amp", default="auto", help="inference precision (the bundle's --amp)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cases = response_cases(args.groups, args.parameters, args.factors, lesions=not args.no_lesions)
    generator = json.loads(args.study.read_text())["generator"]
    index = generator["n_subjects"] - (1 if args.section == "testing" else 2)  # pipeline.phantom.study.split_of
    scales = {case.name: case.tissue_scales for case in cases}
    cases_manifest = write_tissue_changes(generator, scales, args.work / "cases", index)
    print(f"{len(cases)} cases in {cases_manifest.parent} ({time.perf_counter() - started:.0f} s)", flush=True)

    models = [model for experiment in args.experiment for model in experiment_models(experiment)]
    models += [(name, 0, checkpoint) for name, checkpoint in named_paths(args.model, "--model")]
    first = {}  # one run per model and seed, the first given: a run linked into two experiments counts once
    for name, seed, checkpoint in models:
        first.setdefault((name, seed), checkpoint)
    models = [(name, seed, checkpoint, None) for (name, seed), checkpoint in first.items()]
    for model, *pairs in args.adapt:
        ((name, checkpoint),) = named_paths([model], "--adapt")
        models.append((name, 0, checkpoint, dict(pair.split("=", 1) for pair in pairs)))
    maps = []
    for name, seed, checkpoint, adaptation in models:
        maps_dir = args.work / "maps" / f"{name}_seed{seed}"
        infer(checkpoint.resolve(), cases_manifest.resolve(), maps_dir.resolve(), args.amp, adaptation)
        maps.append((name, seed, maps_dir))
        print(f"inferred {name} seed {seed} ({time.perf_counter() - started:.0f} s)", flush=True)
    for gains in args.dictionary:  # the ideal observer's maps (pipeline.dictionary) with the study's protocols
        maps_dir = args.work / "maps" / f"dictionary_{gains}"
        if not (maps_dir / "done").exists():
            study_protocols = protocols(protocol_overrides(generator.get("protocols")))
            write_dictionary_fit(cases_manifest, maps_dir, study_protocols, gains=gains, overwrite=True)
            (maps_dir / "done").touch()
        maps.append((f"dictionary_{gains}", 0, maps_dir))
        print(f"dictionary fit, gains from the {gains} ({time.perf_counter() - started:.0f} s)", flush=True)
    maps += [(name, 0, folder) for name, folder in named_paths(args.maps, "--maps")]
    if not maps:
        raise SystemExit("no model: give --experiment, --model or --maps")

    args.out.mkdir(parents=True, exist_ok=True)
    inputs = inputs_seen(cases, cases_manifest)
    inputs.to_csv(args.out / "inputs.csv", index=False, float_format="%.4g")
    print("what the network is shown: mean change (%) of each image in the changed tissue, as acquired and after each")
    print("intensity reference (brain: its 99th percentile; csf: T1w and T2w over their CSF median)")
    print(inputs.set_index(["case", "image"]).drop(columns="group").round(1).unstack("image").to_string())
    accuracy = reference_metrics(cases_manifest, maps)
    accuracy.to_csv(args.out / "table2.csv", index=False, float_format="%.4g")
    responses = measure(cases, cases_manifest.parent, maps)
    slopes = response_slopes(responses)
    responses.to_csv(args.out / "response.csv", index=False, float_format="%.4g")
    slopes.to_csv(args.out / "slopes.csv", index=False, float_format="%.4g")
    plot(responses[responses["group"] != "lesion"], args.out / "response.png")
    table = slopes_table(slopes)
    lesions = responses[responses["group"] == "lesion"].groupby(["case", "map", "model"])["MPE"].mean().unstack("model")
    print("slope (predicted change / true change; mean ± sd over seeds):")
    print(table.to_string())
    print("\nTable 2's metrics on the unchanged subject (mean over seeds):")
    print(accuracy.drop(columns="seed").groupby("model").mean().round(3).to_string())
    if not lesions.empty:
        print("\nlesions outside the training range, MPE (%) in the lesions (mean over seeds):")
        print(lesions.round(1).to_string())
    record(args.out, "response", args, started, cases=[c.name for c in cases], models=[m[:2] for m in maps])


if __name__ == "__main__":
    main()
