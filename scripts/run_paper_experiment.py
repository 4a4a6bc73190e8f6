"""Reproduce the paper's experiment on the phantom: supervised vs hybrid vs oracle, over several seeds.

Every model is trained by the bundle's own command (``python -m monai.bundle run training``) with the same data,
network, schedule, steps and seed; only the loss weights and (for the oracle) the labels differ:

==============  =================================================================================================
supervised      lambda = 0, 3.5 mm labels (``train_supervised.json``)
hybrid          lambda > 0 (the profile's or the setting's ``lambda_self``), 3.5 mm labels
oracle          lambda = 0, 1 mm labels (``train_oracle.json``): what the low-resolution labels keep us from
==============  =================================================================================================

in each loss setting: ``paper`` (``paper_loss.json``: the published loss, plain L1 with T1 and T2 in units of 3 s,
raw edges, sagittal slices), ``robust`` (``robust.json``: T2 weighted x10 in the L1, edges of Gaussian-smoothed
images, sagittal) and ``default`` (``train.json`` as it is: the setting the ablation chose). Each trained model infers
the test subject (``inference.json``); the maps are evaluated against the 1 mm truth and
:func:`pipeline.reports.experiment.experiment_table` writes the Table-2 layout with the oracle column, the
interpolated low-resolution labels as a yardstick and the fraction of the gap closed. ``search`` trains the
supervised and hybrid models of one setting for a list of lambdas, ``ablate`` hybrid variants (bundle overrides) of
one setting and fusions of their maps (``--fuse``: the voxel-wise median, :mod:`pipeline.fusion`), and both evaluate
on the **validation** subject (the test subject never chooses anything). ``ablate --section testing`` then reports
a variant chosen there on the test subject, with the same trained models.

Runs are kept under ``--out``: a model whose maps exist is not retrained, and an interrupted training resumes
from its last saved epoch, so an interrupted command can simply be started again.

Usage::

    python scripts/run_paper_experiment.py run --profile cpu --seeds 0 1 2 --jobs 2
    python scripts/run_paper_experiment.py search --setting paper --lambdas 0.01 0.03 0.1 --jobs 2
    python scripts/run_paper_experiment.py ablate --setting robust --variant base+supervised \
        --variant axial+supervised slice_axis=2 "slice_size=[176,224]" --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

import pandas as pd

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the script runs from a clone without an install, too

from pipeline.data import ensure_study
from pipeline.fusion import fuse_prediction_sets
from pipeline.reports.evaluation import METRICS, load_test_subjects, per_slice_metrics
from pipeline.reports.experiment import experiment_table
from pipeline.reports.figure import plot_figure
from pipeline.reports.yardsticks import write_interpolated_labels

BUNDLE = REPO / "bundles" / "qmap_hybrid"
CONFIGS = BUNDLE / "configs"
PROFILES = {"cpu": [], "paper": ["paper.json"]}
"""Config files merged after ``train.json`` for each profile (``train.json`` itself is the 2-core ``cpu`` profile)."""
SETTINGS = {"paper": ["paper_loss.json"], "robust": ["robust.json"], "default": []}
"""Config files merged after the profile for each loss setting (``default``: ``train.json``'s own)."""
MODELS = {"supervised": ["train_supervised.json"], "hybrid": [], "oracle": ["train_oracle.json"]}
"""Config files merged last for each model."""
MODEL_KEYS = {
    model: {key for name in files for key in json.loads((CONFIGS / name).read_text())}
    for model, files in MODELS.items()
}
"""The settings each model's config files fix: a variant's override of them (e.g. ``lambda_intensity``) is the hybrid
model's only, never its supervised twin's or the oracle's."""
INFERENCE_KEYS = frozenset(json.loads((CONFIGS / "inference.json").read_text()))
"""Training overrides that inference takes too (``slice_axis``, ``features``, ...)."""


def model_name(setting: str, model: str) -> str:
    """The name of a model in the tables: ``hybrid`` for the paper setting, ``hybrid_robust`` (...) for another."""
    return model if setting == "paper" else f"{model}_{setting}"


def bundle_command(run_id: str, config_files: Sequence[str], overrides: dict) -> list[str]:
    """The ``python -m monai.bundle run`` command line for configs of this bundle and ``--key value`` overrides."""
    configs = [str(CONFIGS / name) for name in config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(BUNDLE)]
    command += ["--config_file", repr(configs)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


def run_bundle(run_id: str, config_files: Sequence[str], overrides: dict, log_path: pathlib.Path, threads: int):
    """Run a bundle command with ``threads`` CPU threads, its output appended to ``log_path``.

    Raises:
        RuntimeError: the command failed; the message holds the end of the log.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(log_path, "a") as log:
        result = subprocess.run(
            bundle_command(run_id, config_files, overrides), check=False, stdout=log, stderr=log, env=env
        )
    if result.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{run_id} failed (exit {result.returncode}); the end of {log_path}:\n{tail}")


@dataclasses.dataclass(frozen=True)
class Run:
    """One model trained with one seed, then inferring one manifest section."""

    profile: str
    setting: str
    model: str
    seed: int
    section: str
    run_dir: pathlib.Path
    overrides: tuple = ()

    @property
    def maps_dir(self) -> pathlib.Path:
        return self.run_dir / f"maps_{self.section}"

    def execute(self, data: dict, threads: int) -> pathlib.Path:
        """Train (or resume training) unless the model exists, infer ``section`` unless done; returns the maps dir."""
        done = self.maps_dir / "done"
        if done.exists():
            return self.maps_dir
        models_dir, log = self.run_dir / "models", self.run_dir / "log.txt"
        configs = ["train.json", *PROFILES[self.profile], *SETTINGS[self.setting], *MODELS[self.model]]
        if not (models_dir / "model.pt").exists():  # written by the validation after the last epoch
            resume = models_dir.is_dir() and any(models_dir.glob("checkpoint*.pt"))
            overrides = {
                **data,
                **{key: value for key, value in self.overrides if key not in MODEL_KEYS[self.model]},
                "seed": self.seed,
                "ckpt_dir": models_dir,
                "log_dir": self.run_dir / "logs",
                "resume": resume,
            }
            started = time.perf_counter()
            run_bundle("training", configs, overrides, log, threads)
            (self.run_dir / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
        shared = {key: value for key, value in self.overrides if key in INFERENCE_KEYS}  # e.g. features
        overrides = {
            **data,
            **shared,
            "section": self.section,
            "checkpoint": models_dir / "model.pt",
            "output_dir": self.maps_dir,
            "overwrite": True,
            "qc": False,  # the tables need the maps only (the QC reports cost ~6 s per model and subject)
        }
        run_bundle("inference", ["inference.json"], overrides, log, threads)
        done.touch()
        return self.maps_dir


def execute_all(runs: Sequence[Run], data: dict, jobs: int) -> list[pathlib.Path]:
    """Execute ``runs``, ``jobs`` at a time, sharing the machine's cores; returns their maps dirs in order."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda run: run.execute(data, threads), runs))


def evaluate(runs: Sequence[Run], maps_dirs: Sequence[pathlib.Path], names: Sequence[str], data: dict):
    """Per-slice metrics (with a ``seed`` column) of every run's maps against the 1 mm truth of its section."""
    subjects = load_test_subjects(data["datalist"], dataset_dir=data["dataset_dir"], section=runs[0].section)
    tables = [
        per_slice_metrics(subjects, {name: folder}).assign(seed=run.seed)
        for run, folder, name in zip(runs, maps_dirs, names)
    ]
    return pd.concat(tables, ignore_index=True), subjects


def map_means(per_slice: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Slice means of every metric per ``by`` group, one column per map and metric (``T1_MPE``, ``T2_HFEN``, ...)."""
    means = per_slice.groupby([*by, "map"])[[m for m in METRICS if m in per_slice]].mean().unstack("map")
    means.columns = [f"{map_name}_{metric}" for metric, map_name in means.columns]
    return means


def labels_yardstick(out: pathlib.Path, section: str, data: dict, seeds: Sequence[int]) -> pd.DataFrame:
    """Per-slice metrics of the section's own low-resolution labels interpolated to 1 mm (model ``labels``), one copy
    per seed so that they sit beside every seed's models in the tables."""
    folder = write_interpolated_labels(
        data["datalist"], out / "labels" / f"maps_{section}", data["dataset_dir"], section, overwrite=True
    )
    subjects = load_test_subjects(data["datalist"], dataset_dir=data["dataset_dir"], section=section)
    per_slice = per_slice_metrics(subjects, {"labels": folder})
    return pd.concat([per_slice.assign(seed=seed) for seed in seeds], ignore_index=True)


def git_state() -> tuple[str | None, bool]:
    """(HEAD commit, whether tracked files have uncommitted changes) of the repository, or (None, False) outside git."""
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], check=False, capture_output=True, text=True
    )
    return commit or None, bool(dirty.stdout.strip())


GIT_AT_START = git_state()
"""The repository's state when this driver started: a long run may see commits land before it ends."""


def record(out: pathlib.Path, name: str, args: argparse.Namespace, started: float, **extra) -> None:
    """Write ``<name>.json``: the command, the commit at the start and at the end, the wall time (and ``extra``'s
    entries)."""
    commit, dirty = git_state()
    info = {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "commit_at_start": GIT_AT_START[0],
        "uncommitted_changes_at_start": GIT_AT_START[1],
        "commit": commit,
        "uncommitted_changes": dirty,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_count": os.cpu_count(),
        "arguments": {key: value for key, value in vars(args).items() if key != "func"},
        **extra,
    }
    (out / f"{name}.json").write_text(json.dumps(info, indent=2, default=str) + "\n")


def run_experiment(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    data = {"datalist": args.datalist, "dataset_dir": args.dataset_dir}
    runs = [
        Run(
            args.profile,
            setting,
            model,
            seed,
            "testing",
            args.out / "runs" / setting / f"{model}_seed{seed}",
            args.overrides,
        )
        for setting in args.settings  # settings outermost: a setting's lambda is read when its first run starts
        for seed in args.seeds
        for model in MODELS
    ]
    names = [model_name(run.setting, run.model) for run in runs]
    maps_dirs = execute_all(runs, data, args.jobs)
    per_slice, subjects = evaluate(runs, maps_dirs, names, data)
    per_slice = pd.concat([per_slice, labels_yardstick(args.out, "testing", data, args.seeds)], ignore_index=True)
    per_slice.to_csv(args.out / "per_slice.csv", index=False)
    table = pd.concat(
        [
            experiment_table(per_slice, *(model_name(setting, model) for model in MODELS), labels="labels").assign(
                setting=setting
            )
            for setting in args.settings
        ],
        ignore_index=True,
    )
    table.to_csv(args.out / "table2.csv", index=False)
    first_seed = {name: folder for run, name, folder in zip(runs, names, maps_dirs) if run.seed == args.seeds[0]}
    plot_figure(subjects[0], first_seed, args.out / "figure.png")
    record(args.out, "experiment", args, started)
    shown = ["setting", "metric", "map", "labels", "supervised", "hybrid", "oracle", "p_value_max", "gap_closed_mean"]
    print(table[shown].to_string(index=False))


def run_search(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    data = {"datalist": args.datalist, "dataset_dir": args.dataset_dir}
    runs, names = [], []
    for seed in args.seeds:
        folder = args.out / "runs" / args.setting
        runs.append(
            Run(
                args.profile,
                args.setting,
                "supervised",
                seed,
                "validation",
                folder / f"supervised_seed{seed}",
                args.overrides,
            )
        )
        names.append(model_name(args.setting, "supervised"))
        for lambda_self in args.lambdas:
            runs.append(
                Run(
                    args.profile,
                    args.setting,
                    "hybrid",
                    seed,
                    "validation",
                    folder / f"hybrid_lambda{lambda_self:g}_seed{seed}",
                    (*args.overrides, ("lambda_self", lambda_self)),
                )
            )
            names.append(f"{model_name(args.setting, 'hybrid')}_lambda{lambda_self:g}")
    per_slice, _ = evaluate(runs, execute_all(runs, data, args.jobs), names, data)
    per_slice.to_csv(args.out / f"search_{args.setting}_per_slice.csv", index=False)
    summary = map_means(per_slice, ["model"])
    summary["mean_T1_T2_MPE"] = summary[["T1_MPE", "T2_MPE"]].mean(axis=1)
    summary = summary.sort_values("mean_T1_T2_MPE")
    summary.to_csv(args.out / f"search_{args.setting}.csv")
    record(args.out, f"search_{args.setting}", args, started)
    print(summary.round(4).to_string())


def run_ablation(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    data = {"datalist": args.datalist, "dataset_dir": args.dataset_dir}
    runs, names = [], []
    for seed in args.seeds:
        for variant in args.variants:
            name, *pairs = variant
            models = ["supervised", "hybrid"] if name.endswith("+supervised") else ["hybrid"]
            name = name.removesuffix("+supervised")
            for model in models:
                runs.append(
                    Run(
                        args.profile,
                        args.setting,
                        model,
                        seed,
                        args.section,
                        args.out / "runs" / f"{name}_{model}_seed{seed}",
                        (*args.overrides, *parse_overrides(pairs)),
                    )
                )
                names.append(f"{name}:{model}")
    maps_dirs = execute_all(runs, data, args.jobs)
    by_name = {(name, run.seed): folder for name, run, folder in zip(names, runs, maps_dirs)}
    for name, *variants in args.fusions:  # the voxel-wise median of finished variants' maps of one model
        sources = [variant if ":" in variant else f"{variant}:hybrid" for variant in variants]
        models = {source.split(":")[1] for source in sources}
        if len(models) != 1 or any((source, args.seeds[0]) not in by_name for source in sources):
            raise SystemExit(f"--fuse {name}: {variants} must name trained variants of one model (hybrid by default).")
        model = models.pop()
        for seed in args.seeds:
            run = dataclasses.replace(runs[0], seed=seed, run_dir=args.out / "runs" / f"{name}_{model}_seed{seed}")
            runs.append(run)
            names.append(f"{name}:{model}")
            maps_dirs.append(fuse_prediction_sets([by_name[(s, seed)] for s in sources], run.maps_dir, overwrite=True))
    per_slice, _ = evaluate(runs, maps_dirs, names, data)
    per_slice = pd.concat([per_slice, labels_yardstick(args.out, args.section, data, args.seeds)], ignore_index=True)
    stem = "ablation" if args.section == "validation" else f"ablation_{args.section}"
    per_slice.to_csv(args.out / f"{stem}_per_slice.csv", index=False)
    per_seed = map_means(per_slice, ["model", "seed"])
    per_seed.to_csv(args.out / f"{stem}_per_seed.csv")
    summary = per_seed.groupby("model").agg(["mean", "std"])
    summary.columns = [f"{column}_{statistic}" for column, statistic in summary.columns]
    summary.to_csv(args.out / f"{stem}.csv")
    pairs = [  # each variant (or fusion) with both models: hybrid vs supervised, paired t-tests
        experiment_table(per_slice, f"{name}:supervised", f"{name}:hybrid", None, labels="labels").assign(variant=name)
        for name in dict.fromkeys(name.rsplit(":", 1)[0] for name in names)
        if {f"{name}:supervised", f"{name}:hybrid"} <= set(names)
    ]
    if pairs:
        pd.concat(pairs, ignore_index=True).to_csv(args.out / f"{stem}_pairs.csv", index=False)
    record(args.out, stem, args, started)
    print(per_seed.round(4).to_string())


def parse_overrides(pairs: Sequence[str]) -> tuple:
    """``["key=value", ...]`` → ``(("key", "value"), ...)``: extra ``--key value`` of every training command."""
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise SystemExit(f"--set takes key=value pairs, got {bad}")
    return tuple(tuple(pair.split("=", 1)) for pair in pairs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(required=True)
    experiment = commands.add_parser("run", help="train every model for every seed, evaluate on the test subject")
    experiment.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    experiment.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    experiment.set_defaults(func=run_experiment, out=REPO / "runs" / "paper_experiment")
    search = commands.add_parser("search", help="choose lambda on the validation subject")
    search.add_argument("--setting", default="paper", choices=list(SETTINGS))
    search.add_argument("--lambdas", nargs="+", type=float, required=True)
    search.add_argument("--seeds", nargs="+", type=int, default=[0])
    search.set_defaults(func=run_search, out=REPO / "runs" / "paper_search")
    ablation = commands.add_parser("ablate", help="loss/training variants on the validation subject")
    ablation.add_argument("--setting", default="robust", choices=list(SETTINGS))
    ablation.add_argument(
        "--variant",
        dest="variants",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME", "KEY=VALUE"),
        help="a hybrid variant: a name and its bundle overrides; a name ending in '+supervised' "
        "trains its own supervised model too (for overrides that change it, e.g. slice_axis)",
    )
    ablation.add_argument(
        "--fuse",
        dest="fusions",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "VARIANT"),
        help="a row of the voxel-wise median of these variants' maps (pipeline.fusion): their hybrid models', or "
        "VARIANT:supervised, e.g. --fuse orientations default sagittal coronal",
    )
    ablation.add_argument("--seeds", nargs="+", type=int, default=[0])
    ablation.add_argument(
        "--section",
        default="validation",
        choices=("validation", "testing"),
        help="the subjects the models infer and are evaluated on: validation (where choices are made), or testing "
        "(the report of a choice made there: the trained models are reused, files ablation_testing*)",
    )
    ablation.set_defaults(func=run_ablation, out=REPO / "runs" / "ablation")
    for command in (experiment, search, ablation):
        command.add_argument("--profile", default="cpu", choices=list(PROFILES))
        command.add_argument("--out", type=pathlib.Path, help="output folder (runs are kept and reused there)")
        command.add_argument("--jobs", type=int, default=1, help="trainings at a time (they share the CPU cores)")
        command.add_argument("--datalist", default=str(REPO / "data_manifest.json"))
        command.add_argument("--dataset_dir", default=str(REPO / "data" / "phantom"))
        command.add_argument(
            "--set",
            dest="overrides",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="extra bundle overrides of every training, e.g. max_epochs=2",
        )
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_study(args.datalist, args.dataset_dir)  # once, before --jobs trainings would each generate a missing study
    args.func(args)


if __name__ == "__main__":
    main()
