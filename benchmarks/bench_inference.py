"""Benchmark inference as ratios: network GFLOP/s against a matmul peak measured in the same run, the stages of one
subject, and the peak memory of whole inference runs over 1, 8 and 32 subjects.

Everything is built from the bundle's own ``inference.json`` / ``train.json`` (MONAI ``ConfigParser``, no copies of
their settings); the subject is the first test subject of ``--datalist`` (default: the realistic phantom study).

    python benchmarks/bench_inference.py [--datalist data/phantom_realistic/dataset.json] [--threads 2]
                                         [--subjects 1 8 32] [--skip-runs | --only-runs] [--images-only]
                                         [--set KEY=VALUE ...]

Tables:

1. **network**: FLOPs per slice (``torch.utils.flop_counter``), time per slice and achieved GFLOP/s as a share of the
   fp32 matmul peak (``torch.mm`` of 2048², best of several), for inference (no grad) with each runtime (eager,
   eager channels-last, TorchScript, ONNX Runtime) and a training step (forward + backward), default and paper
   features;
2. **stages of one subject**: imports (a fresh process), pre-run validation, each volume transform grouped by what
   it does (load, checks, co-registration check, registration, brain mask, resampling, crop and normalisation),
   network, maps back to the T1w grid and writing, QC;
3. **whole runs** (``python -m monai.bundle run inference`` in a subprocess, peak RSS of that process from
   a launcher process): wall time, time per subject, time per subject beyond the first run (imports and one-time
   setup left out) and peak RSS for each ``--subjects`` count (a manifest that lists the test subject's files under N
   names: the same work and memory as N different subjects).

``--images-only`` benchmarks the test subject as a new subject: its weighted images alone, so the brain mask is
estimated and the QC has no labels or references to compare with.

Goals (issue 13): network ≥ 60 % of the matmul peak, ≤ 5 s per 1 mm subject, RSS within 10 % for 1, 8, 32 subjects.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import bundle_configs  # benchmarks/ is on sys.path when a benchmark runs as a script
import torch
from bundle_configs import BUNDLE, CONFIGS, REPO
from monai.bundle import ConfigParser
from torch.utils.flop_counter import FlopCounterMode

from pipeline.engine import write_model_card

DEFAULT_DATALIST = REPO / "data" / "phantom_realistic" / "dataset.json"

STAGES = {  # volume transform class -> stage of the table
    "LoadVolumesd": "load",
    "CheckVolumed": "checks",
    "MarkFitFailuresd": "checks",
    "CheckMapUnitsd": "checks",
    "CheckMaskd": "checks",
    "CheckCoregistrationd": "co-registration check",
    "RegisterToReferenced": "registration",
    "BrainMaskd": "brain mask",
    "Orientationd": "resampling",
    "Spacingd": "resampling",
    "ResampleToMatchd": "resampling",
}
"""Any other transform counts as ``crop, normalisation, stacking``."""


def parse(config: str | list[str], **overrides) -> ConfigParser:
    """A bundle config on the CPU (:func:`bundle_configs.parse`)."""
    return bundle_configs.parse(config, **{"device": "$torch.device('cpu')", **overrides})


def median_seconds(run, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 ``torch.mm`` rate of this process (2 n³ FLOPs per product)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(median_seconds(lambda: torch.mm(a, b), 1, warmup=0) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def flops(run) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def runtimes(name: str, configs: list[str], scratch: str) -> dict:
    """``{name: network}`` for eager, eager channels-last, TorchScript and ONNX Runtime of the same weights: the
    bundle's ``inference*.json`` networks, the exports made by MONAI's bundle commands (:func:`export_command`)."""
    from pipeline.export import export_command

    eager = parse(configs).get_parsed_content("network").eval()
    checkpoint = pathlib.Path(scratch, f"{name}_model.pt")  # and .ts, .onnx beside it
    torch.save(eager.state_dict(), checkpoint)
    write_model_card(scratch, **bundle_configs.trained_settings())  # the card the exports and the runs read
    overrides = ["--features", repr(parse(configs)["features"])]  # the paper features, when paper.json is merged
    for kind, suffix in (("torchscript", ".ts"), ("onnx", ".onnx")):
        command = export_command(kind, BUNDLE, checkpoint, checkpoint.with_suffix(suffix)) + overrides
        subprocess.run(command, check=True, capture_output=True)
    channels_last = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    exported = {
        "torchscript_file": str(checkpoint.with_suffix(".ts")),
        "onnx_file": str(checkpoint.with_suffix(".onnx")),
    }
    return {
        "eager": eager,
        "eager, channels-last": lambda x: channels_last(x.contiguous(memory_format=torch.channels_last)),
        "TorchScript": parse([*configs, "inference_torchscript.json"], **exported).get_parsed_content("network"),
        "ONNX Runtime": parse([*configs, "inference_onnx.json"], **exported).get_parsed_content("network"),
    }


def network_row(name: str, configs: list[str], peak: float, batch: torch.Tensor, scratch: str) -> list[tuple]:
    """(row name, FLOPs per slice, seconds per slice, peak) for inference with each runtime and a training step."""
    network, batch_size, rows = parse(configs).get_parsed_content("network"), len(batch), []
    with torch.no_grad():
        forward_flops = flops(lambda: network(batch)) / batch_size
        for runtime, run in runtimes(name.split()[0], configs, scratch).items():
            seconds = median_seconds(lambda: run(batch), repeats=5) / batch_size  # noqa: B023 (called at once)
            rows.append((f"{name}, inference, {runtime}", forward_flops, seconds, peak))
    network.train()

    def step():
        network(batch).sum().backward()

    rows.append(
        (f"{name}, training step (fwd + bwd)", flops(step) / batch_size, median_seconds(step, 3) / batch_size, peak)
    )
    return rows


def network_rows(peak: float, batch_size: int, slice_size: tuple[int, int], scratch: str) -> list[tuple]:
    from pipeline.data import input_channels

    channels = input_channels(bundle_configs.trained_settings()["context_slices"])  # 2.5D: neighbours as channels
    batch = torch.rand(batch_size, channels, *slice_size)
    rows = network_row("default", ["inference.json"], peak, batch, scratch)
    return rows + network_row("paper features", ["inference.json", "paper.json"], peak, batch, scratch)


def benchmark_entry(datalist: str, dataset_dir: str, images_only: bool) -> dict:
    """The first test entry of the manifest; with ``images_only`` its weighted images alone (a new subject: the brain
    mask is estimated, the QC has no labels or references to compare with)."""
    import pipeline.data

    entry = pipeline.data.load_datalist(datalist, "testing", dataset_dir)[0]
    return {k: v for k, v in entry.items() if k in ("subject", *pipeline.data.IMAGE_KEYS)} if images_only else entry


def stage_times(datalist: str, dataset_dir: str, scratch: str, images_only: bool = False) -> dict[str, float]:
    """Seconds of each stage for the first test subject, run as ``inference.json`` wires it."""
    import pipeline.data
    import pipeline.data.validation

    stages = collections.OrderedDict()
    command = "import time; t = time.perf_counter(); import pipeline.engine, pipeline.data, pipeline.qc, pipeline.bids"
    command += ", monai.bundle; print(time.perf_counter() - t)"
    stages["imports (fresh process)"] = float(subprocess.check_output([sys.executable, "-c", command], text=True))
    entries = [benchmark_entry(datalist, dataset_dir, images_only)]
    study = {"datalist": str(datalist), "dataset_dir": str(dataset_dir)}
    start = time.perf_counter()
    assert not pipeline.data.validation.validate_entry(entries[0]), "the benchmark subject has problems"
    stages["pre-run validation"] = time.perf_counter() - start
    parser = parse("inference.json", output_dir=f"{scratch}/stages", **study)
    parser["dataset"]["datalist"] = entries
    dataset, network = parser.get_parsed_content("dataset"), parser.get_parsed_content("network").eval()
    inferer, postprocessing = parser.get_parsed_content("inferer"), parser.get_parsed_content("postprocessing")
    item = dict(entries[0])
    for transform in dataset.transform.transforms:
        start = time.perf_counter()
        item = transform(item)
        stage = STAGES.get(type(transform).__name__, "crop, normalisation, stacking")
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start
    with torch.no_grad():
        start = time.perf_counter()
        item["pred"] = inferer(item["image"][None], network)[0]
        stages["network"] = time.perf_counter() - start
    for transform in postprocessing.transforms:
        start = time.perf_counter()
        item = transform(item)
        stage = "QC" if type(transform).__name__ == "SubjectQCd" else "masking, maps to T1w grid, writing"
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - start
    stages["(slice shape)"] = tuple(item["image"].shape[1:])
    return stages


PEAK_RSS_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""
"""Runs a command and writes its peak RSS (KiB) to a file: ``python -c LAUNCHER FILE COMMAND...``."""


def whole_run(
    datalist: str,
    dataset_dir: str,
    images_only: bool,
    subjects: int,
    scratch: str,
    threads: int,
    configs=("inference.json",),
    **overrides,
) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of ``monai.bundle run inference`` over ``subjects`` copies of the test subject.

    ``overrides`` are the run's ``--key value`` (e.g. ``num_workers``); ``cache`` names the validation cache folder
    (a run with a new one validates every subject).
    """
    entry = benchmark_entry(datalist, dataset_dir, images_only)
    copies = [{**entry, "subject": f"sub-{index:03d}"} for index in range(subjects)]
    manifest = pathlib.Path(scratch, f"manifest_{subjects}.json")
    manifest.write_text(json.dumps({"training": [], "validation": [], "testing": copies}))
    run = pathlib.Path(tempfile.mkdtemp(dir=scratch, prefix=f"run_{subjects}_"))
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--bundle_root", str(BUNDLE)]
    command += [
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        repr([str(CONFIGS / c) for c in configs]),
    ]
    cache = overrides.pop("cache", str(run / "cache"))
    settings = {"datalist": manifest, "dataset_dir": scratch, "checkpoint": pathlib.Path(scratch, "default_model.pt")}
    for key, value in {**settings, "output_dir": run / "maps", **overrides}.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore", QMAP_HYBRID_CACHE=cache)
    start = time.perf_counter()
    with open(run / "log.txt", "w") as log:
        # through a small launcher: a child forked from this (large) process would report this process's peak RSS as
        # its own (Linux keeps the forked memory's high-water mark across exec in ru_maxrss)
        launcher = [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(run / "peak_rss_kib"), *map(str, command)]
        status = subprocess.run(launcher, check=False, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"inference over {subjects} subjects failed:\n{(run / 'log.txt').read_text()[-3000:]}")
    return seconds, int((run / "peak_rss_kib").read_text()) / 2**20


def print_table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print()


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--datalist", default=str(DEFAULT_DATALIST))
    arguments.add_argument("--dataset_dir", default=None)
    arguments.add_argument("--threads", type=int, default=2)
    arguments.add_argument("--batch-size", type=int, default=32)
    arguments.add_argument("--subjects", type=int, nargs="*", default=[1, 8, 32])
    arguments.add_argument("--skip-runs", action="store_true", help="only the network and stage tables")
    arguments.add_argument("--only-runs", action="store_true", help="only the whole runs over --subjects")
    arguments.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the whole runs")
    arguments.add_argument(
        "--images-only", action="store_true", help="the test subject's weighted images alone, as a new subject's"
    )
    options = arguments.parse_args()
    torch.set_num_threads(options.threads)
    dataset_dir = options.dataset_dir or str(pathlib.Path(options.datalist).parent)

    with tempfile.TemporaryDirectory() as scratch:
        if options.only_runs:
            checkpoint = pathlib.Path(scratch, "default_model.pt")
            torch.save(parse("inference.json").get_parsed_content("network").state_dict(), checkpoint)
            write_model_card(scratch, **bundle_configs.trained_settings())  # what the bundle's inference reads
        else:
            print_network_and_stage_tables(options, dataset_dir, scratch)  # also exports default_model.{ts,onnx}
        if not options.skip_runs:
            print_run_table(options, dataset_dir, scratch)


def print_network_and_stage_tables(options: argparse.Namespace, dataset_dir: str, scratch: str) -> None:
    peak = matmul_peak_gflops()
    stages = stage_times(options.datalist, dataset_dir, scratch, options.images_only)
    shape = stages.pop("(slice shape)")  # (X, Y, Z): Z axial slices of X × Y
    print(f"torch {torch.__version__}, {options.threads} threads, fp32 matmul peak {peak:.0f} GFLOP/s\n")
    rows = network_rows(peak, options.batch_size, shape[:2], scratch)
    print_table(
        (f"network (batch {options.batch_size})", "GFLOP/slice", "ms/slice", "GFLOP/s", "% of peak"),
        [
            (n, f"{f / 1e9:.2f}", f"{s * 1e3:.1f}", f"{f / s / 1e9:.0f}", f"{100 * f / s / 1e9 / p:.0f}")
            for n, f, s, p in rows
        ],
    )
    print_table(
        (f"stage, one subject ({shape[2]} slices of {shape[0]}×{shape[1]})", "s"),
        [
            *[(name, f"{seconds:.2f}") for name, seconds in stages.items()],
            ("total (a fresh command)", f"{sum(stages.values()):.2f}"),
        ],
    )


def print_run_table(options: argparse.Namespace, dataset_dir: str, scratch: str) -> None:
    study, threads = (options.datalist, dataset_dir, options.images_only), options.threads
    overrides = dict(item.split("=", 1) for item in options.set)
    runs = [(f"{n} subject(s)", n, *whole_run(*study, n, scratch, threads, **overrides)) for n in options.subjects]
    if not options.only_runs:
        cached = {"cache": f"{scratch}/cache_8"}
        whole_run(*study, 8, scratch, threads, **cached)  # validates the 8 subjects into the cache
        onnx = (["inference.json", "inference_onnx.json"], {"onnx_file": f"{scratch}/default_model.onnx"})
        for name, configs, more in (
            ("8, validation cached", ["inference.json"], {}),
            ("8, validation cached, num_workers 1", ["inference.json"], {"num_workers": 1}),
            ("8, validation cached, ONNX Runtime", onnx[0], onnx[1]),
            ("8, validation cached, ONNX Runtime, no QC", onnx[0], {**onnx[1], "qc": False}),
        ):
            runs.append((name, 8, *whole_run(*study, 8, scratch, threads, configs, **cached, **more)))
    print_table(
        (
            "whole inference run (" + (", ".join(options.set) or "defaults: validated, QC") + ")",
            "wall (s)",
            "s/subject",
            "s/extra subject",
            "peak RSS (GiB)",
            "RSS / first",
        ),
        [
            (
                name,
                f"{s:.1f}",
                f"{s / n:.1f}",
                marginal(runs[0], n, s) if i < len(options.subjects) else "",
                f"{r:.2f}",
                f"{r / runs[0][3]:.2f}",
            )
            for i, (name, n, s, r) in enumerate(runs)
        ],
    )


def marginal(first: tuple, subjects: int, seconds: float) -> str:
    """Seconds per subject beyond the first run: ``(T_N - T_1) / (N - 1)`` against the first row of the subject
    counts (``T_1``: its wall time, ``1``: its count), so imports and one-time setup are left out; blank for that row."""
    _, first_subjects, first_seconds, _ = first
    if subjects == first_subjects:
        return ""
    return f"{(seconds - first_seconds) / (subjects - first_subjects):.1f}"


if __name__ == "__main__":
    main()
