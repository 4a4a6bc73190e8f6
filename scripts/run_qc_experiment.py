"""QC and adaptation of trained models on the realistic phantom: does QC flag what is wrong, and does adaptation help?

For each seed's trained default model (``--models``, e.g. ``runs/qc/seed{seed}/models/model.pt``), with the bundle's
own commands:

1. ``calibrating`` on the realistic study's validation subject (thresholds beside the model);
2. QC of the test subject in five cases: ``normal`` (inference as it is), ``swapped`` (T1w and T2w exchanged in the
   manifest), ``t2_error`` (the normal maps with T2 x 1.2, checked by ``python -m pipeline.qc check``), ``protocol``
   (the test subject imaged with another site's protocol, ``--shifted``: TSE TE 120 ms / echo spacing 10 ms, FLAIR
   TI 2000 ms, with that TSE protocol in force for the QC) and ``protocol_unstated`` (the same images, QC left at the
   default protocol). Each case's worst figure relative to its limit (``worst_ratio``: > 1 is a flag) is the margin.
3. adaptation to the new protocol (``adapting``, TSE protocol in force): its steps and learning rate are chosen on
   the shifted study's **validation** subject for seed 0 (lowest mean T1/T2 MPE against its 1 mm truth; the row with
   0 steps is the model without adaptation), then applied to the test subject for every seed: MPE before (the
   ``protocol`` case), adapted (kept or not) and written (what the keep rule chose).

Writes ``qc_cases.csv``, ``adaptation_search.csv``, ``adaptation.csv``, ``qc_experiment.json`` (command, commit,
wall time) and the first seed's ``normal`` and ``protocol`` pages (``<case>/index.html``, ``<case>/<subject>/report.html``)
to ``--results``. Finished steps are reused (their output files exist), so an interrupted run restarts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from run_paper_experiment import record, run_bundle

from pipeline.data.manifest import load_datalist
from pipeline.engine import MAP_NAMES
from pipeline.qc.__main__ import main as qc_main

SHIFTED_TSE = {"te": 120.0, "echo_spacing": 10.0}
"""The shifted study's TSE protocol (``python -m pipeline.phantom --protocol tse.te=120 --protocol tse.echo_spacing=10
--protocol flair.ti=2000``)."""
ADAPTATION_GRID = {"adapt_steps": (50, 200), "adapt_learning_rate": (1e-4, 5e-4)}
"""Adaptation settings tried on the validation subject."""
THREADS = 2


def qc_of(maps_dir: pathlib.Path, section_entries: Sequence[dict]) -> dict:
    """The ``qc.json`` of the (single) subject of ``section_entries`` in ``maps_dir``."""
    return json.loads((maps_dir / section_entries[0]["subject"] / "qc.json").read_text())


def worst_ratio(qc: dict, calibration: dict) -> float:
    """The largest figure of ``qc`` over its calibrated limit (residuals, bias departures, label MPE; > 1: flagged)."""
    ratios = []
    for contrast, limits in calibration["thresholds"].items():
        figures = qc["self_consistency"][contrast]
        ratios.append(figures["residual"] / limits["residual"])
        for tissue, band in limits["bias"].items():
            ratios.append(abs(figures["bias"][tissue] - band["centre"]) / band["tolerance"])
    for name, limit in calibration["label_thresholds"].items():
        ratios.append(qc["label_resolution"][name] / limit)
    return float(np.nanmax(ratios)) if not np.isnan(ratios).any() else float("inf")


def case_row(seed: int, case: str, qc: dict, calibration: dict) -> dict:
    row = {"seed": seed, "case": case, "flagged": qc["flagged"], "n_flags": len(qc["flags"])}
    row["checks"] = " ".join(sorted({flag["check"] for flag in qc["flags"]}))
    row["worst_ratio"] = worst_ratio(qc, calibration)
    for contrast, figures in qc["self_consistency"].items():
        row[f"{contrast}_residual"] = figures["residual"]
        for tissue, value in figures["bias"].items():
            row[f"{contrast}_bias_{tissue}"] = value
    row.update({f"label_{name}": value for name, value in (qc["label_resolution"] or {}).items() if "mpe" in name})
    row.update({f"true_{name}": value for name, value in (qc["metrics"] or {}).items()})
    row.update(
        {f"median_{name}_{tissue}": value for name, by in qc["plausibility"].items() for tissue, value in by.items()}
    )
    return row


def swapped_manifest(manifest: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """A copy of ``manifest`` whose testing entries have T1w and T2w exchanged (absolute paths)."""
    entries = load_datalist(manifest, "testing")
    for entry in entries:
        entry["t1w"], entry["t2w"] = entry["t2w"], entry["t1w"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"testing": entries}, indent=2))
    return out


def with_t2_error(maps_dir: pathlib.Path, out: pathlib.Path, factor: float = 1.2) -> pathlib.Path:
    """A copy of a maps folder with every T2 map multiplied by ``factor``."""
    for subject_dir in (path for path in maps_dir.iterdir() if path.is_dir()):
        (out / subject_dir.name).mkdir(parents=True, exist_ok=True)
        for name in MAP_NAMES:
            image = nib.load(subject_dir / f"{name}.nii.gz")
            data = image.get_fdata(dtype=np.float32) * (factor if name == "t2_map" else 1.0)
            nib.save(nib.Nifti1Image(data, image.affine), out / subject_dir.name / f"{name}.nii.gz")
    return out


def run_once(run_id: str, configs: Sequence[str], overrides: dict, done: pathlib.Path, log: pathlib.Path) -> None:
    """A bundle command unless its output ``done`` exists."""
    if not done.exists():
        run_bundle(run_id, configs, {**overrides, "overwrite": True}, log, THREADS)


def study_overrides(manifest: pathlib.Path) -> dict:
    return {"datalist": manifest, "dataset_dir": manifest.parent}


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)
    study, shifted = args.study / "dataset.json", args.shifted / "dataset.json"
    testing = load_datalist(study, "testing")
    shifted_protocols = repr({"tse_epg": SHIFTED_TSE})
    cases, adaptation, search = [], [], []
    for seed in args.seeds:
        model = pathlib.Path(args.models.format(seed=seed))
        out, log = args.out / f"seed{seed}", args.out / f"seed{seed}" / "commands.log"
        base = {"checkpoint": model, **study_overrides(study)}
        calibration_file = model.parent / "qc_calibration.json"
        run_once("calibrating", ["inference.json", "calibrate.json"], base, calibration_file, log)
        calibration = json.loads(calibration_file.read_text())
        maps = {case: out / case for case in ("normal", "swapped", "t2_error", "protocol", "protocol_unstated")}
        run_once(
            "inference", ["inference.json"], {**base, "output_dir": maps["normal"]}, maps["normal"] / "index.html", log
        )
        swapped = swapped_manifest(study, out / "swapped.json")
        run_once(
            "inference",
            ["inference.json"],
            {**base, "datalist": swapped, "dataset_dir": args.study, "output_dir": maps["swapped"]},
            maps["swapped"] / "index.html",
            log,
        )
        if not (maps["t2_error"] / "index.html").exists():
            with_t2_error(maps["normal"], maps["t2_error"])
            qc_main(["check", str(study), "--maps", str(maps["t2_error"]), "--calibration", str(calibration_file)])
        on_shifted = {"checkpoint": model, **study_overrides(shifted)}
        run_once(
            "inference",
            ["inference.json"],
            {
                **on_shifted,
                "output_dir": maps["protocol"],
                "qc_protocols": shifted_protocols,
                "qc_calibration": calibration_file,
            },
            maps["protocol"] / "index.html",
            log,
        )
        run_once(
            "inference",
            ["inference.json"],
            {**on_shifted, "output_dir": maps["protocol_unstated"], "qc_calibration": calibration_file},
            maps["protocol_unstated"] / "index.html",
            log,
        )
        cases += [case_row(seed, case, qc_of(folder, testing), calibration) for case, folder in maps.items()]

        adapt = {**on_shifted, "qc_protocols": shifted_protocols, "qc_calibration": calibration_file}
        if seed == args.seeds[0]:  # the adaptation setting, chosen on the validation subject
            validation = load_datalist(shifted, "validation")
            folder = out / "protocol_validation"
            settings = {**adapt, "section": "validation", "output_dir": folder}
            run_once("inference", ["inference.json"], settings, folder / "index.html", log)
            metrics = qc_of(folder, validation)["metrics"]
            search.append(
                {"adapt_steps": 0, **metrics, "t1_t2_mpe": (metrics["t1_mpe_percent"] + metrics["t2_mpe_percent"]) / 2}
            )
            for steps, learning_rate in itertools.product(*ADAPTATION_GRID.values()):
                folder = out / f"adapt_validation_{steps}_{learning_rate:g}"
                settings = {"adapt_steps": steps, "adapt_learning_rate": learning_rate, "section": "validation"}
                run_once(
                    "adapting",
                    ["inference.json", "adapt.json"],
                    {**adapt, **settings, "output_dir": folder},
                    folder / "index.html",
                    log,
                )
                result = json.loads((folder / validation[0]["subject"] / "adaptation.json").read_text())
                metrics = result["metrics_after"]  # the adapted model's, kept or not
                search.append(
                    {
                        **settings,
                        "kept": result["kept"],
                        "score_before": result["score_before"],
                        "score_after": result["score_after"],
                        **metrics,
                        "t1_t2_mpe": (metrics["t1_mpe_percent"] + metrics["t2_mpe_percent"]) / 2,
                    }
                )
            chosen = min(search[1:], key=lambda row: row["t1_t2_mpe"])  # the best adaptation (row 0: none)
            chosen = {key: chosen[key] for key in ADAPTATION_GRID}
        folder = out / "adapted"
        run_once(
            "adapting",
            ["inference.json", "adapt.json"],
            {**adapt, **chosen, "output_dir": folder},
            folder / "index.html",
            log,
        )
        result = json.loads((folder / testing[0]["subject"] / "adaptation.json").read_text())
        in_protocol = qc_of(maps["normal"], testing)["metrics"]
        adaptation.append(
            {
                "seed": seed,
                **chosen,
                "kept": result["kept"],
                "score_before": result["score_before"],
                "score_after": result["score_after"],
                "flags_before": len(result["flags_before"]),
                "flags_after": len(result["flags_after"]),
                **{f"before_{name}": value for name, value in result["metrics_before"].items()},
                **{f"adapted_{name}": value for name, value in result["metrics_after"].items()},
                **{f"written_{name}": value for name, value in qc_of(folder, testing)["metrics"].items()},
                **{f"in_protocol_{name}": value for name, value in in_protocol.items()},
            }
        )
    pd.DataFrame(cases).to_csv(args.results / "qc_cases.csv", index=False, float_format="%.5g")
    pd.DataFrame(search).to_csv(args.results / "adaptation_search.csv", index=False, float_format="%.5g")
    pd.DataFrame(adaptation).to_csv(args.results / "adaptation.csv", index=False, float_format="%.5g")
    first = args.out / f"seed{args.seeds[0]}"
    for case in ("normal", "protocol"):  # two example runs' pages (self-contained), their links kept
        page = pathlib.Path(case, testing[0]["subject"], "report.html")
        (args.results / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / page, args.results / page)
        shutil.copy(first / case / "index.html", args.results / case / "index.html")
    record(args.results, "qc_experiment", args, started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="runs/qc/seed{seed}/models/model.pt", help="checkpoint per {seed}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--study", type=pathlib.Path, default=REPO / "data" / "phantom_realistic")
    parser.add_argument("--shifted", type=pathlib.Path, default=REPO / "data" / "phantom_shifted")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "runs" / "qc_experiment")
    parser.add_argument("--results", type=pathlib.Path, default=REPO / "docs" / "results" / "qc")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
