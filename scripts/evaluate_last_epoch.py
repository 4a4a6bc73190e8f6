"""Evaluate the hybrid models of a ``run_paper_experiment.py run`` after their last epoch on the validation subject:
the protocol of ``docs/results/default`` section 1d (the ablation's), so that runs of ``run`` (whose ``model.pt`` is
the best of several validations) compare with it. A run stopped before ``--epoch`` is named and skipped.

    python scripts/evaluate_last_epoch.py runs/bf16head_realistic/runs/default docs/results/precision/validation/x.csv

Writes the per-slice metrics (``pipeline.reports.per_slice_metrics``) to the CSV and prints the means per model.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

import torch

from pipeline.reports import load_test_subjects, per_slice_metrics

BUNDLE = pathlib.Path(__file__).resolve().parents[1] / "bundles" / "qmap_hybrid"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=pathlib.Path, help="folder of <model>_seed<n>/models/ (the run's runs/<setting>)")
    parser.add_argument("out", type=pathlib.Path, help="per-slice CSV to write")
    parser.add_argument("--datalist", default="data/phantom_realistic/dataset.json")
    parser.add_argument("--dataset_dir", default="data/phantom_realistic")
    parser.add_argument("--epoch", type=int, default=16)
    args = parser.parse_args()
    study = ["--datalist", args.datalist, "--dataset_dir", args.dataset_dir]
    folders, scratch = {}, pathlib.Path(tempfile.mkdtemp(prefix="last-epoch-"))
    for run in sorted(args.runs.glob("hybrid_seed*")):
        state = run / "models" / f"checkpoint_epoch={args.epoch}.pt"
        if not state.is_file():
            print(f"{run.name}: stopped before epoch {args.epoch} (no {state.name}); skipped")
            continue
        models = scratch / run.name / "models"
        models.mkdir(parents=True)
        torch.save(torch.load(state, weights_only=True)["model"], models / "model.pt")
        (models / "model.json").write_text((run / "models" / "model.json").read_text())
        command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--bundle_root", str(BUNDLE)]
        command += ["--config_file", str(BUNDLE / "configs" / "inference.json"), *study, "--section", "validation"]
        command += ["--checkpoint", str(models / "model.pt"), "--output_dir", str(scratch / run.name / "maps")]
        subprocess.run([*command, "--qc", "false", "--check_inputs", "false"], check=True, capture_output=True)
        folders[run.name] = str(scratch / run.name / "maps")
    subjects = load_test_subjects(args.datalist, dataset_dir=args.dataset_dir, section="validation")
    per_slice = per_slice_metrics(subjects, folders)
    per_slice.to_csv(args.out, index=False)
    print(per_slice.groupby(["model", "map"])[["MPE", "HFEN", "PSNR", "SSIM"]].mean().unstack("map").round(3))


if __name__ == "__main__":
    main()
