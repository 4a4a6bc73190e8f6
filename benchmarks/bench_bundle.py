"""Benchmark the bundle as configured: training throughput (hybrid vs supervised), data wait, inference, memory.

Builds the real ``train.json`` / ``inference.json`` objects with MONAI's ``ConfigParser`` (no copies of
their settings here), trains ``--iterations`` steps with each loss on the same cached slices and times
them with Ignite events, then runs whole-volume inference on the first test subject. Prints a table.

    python benchmarks/bench_bundle.py [--datalist data_manifest.json --dataset_dir data/phantom]
                                      [--iterations 30] [--threads 2]

Goals (issue 4): hybrid/supervised time per slice ≤ 1.05, data wait < 5 % of step time, inference
≤ 20 s per 1 mm subject on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch
from bundle_configs import parse  # benchmarks/ is on sys.path when a benchmark runs as a script
from ignite.engine import Events


def time_training(lambda_self: float, iterations: int, overrides: dict) -> dict:
    """Train ``iterations`` steps; returns slices/s and the share of step time spent waiting for data."""
    parser = parse("train.json", lambda_self=lambda_self, **overrides)
    parser.get_parsed_content("initialize")  # seed, and the phantom study if it is missing
    trainer = parser.get_parsed_content("train#trainer")
    trainer.state.max_epochs, trainer.state.epoch_length = 1, iterations + 2  # warm-up + timed steps
    timings = {"wait": 0.0, "steps": []}
    marks = {}

    @trainer.on(Events.GET_BATCH_STARTED)
    def _batch_started(_):
        marks["batch"] = time.perf_counter()

    @trainer.on(Events.GET_BATCH_COMPLETED)
    def _batch_completed(engine):
        if engine.state.iteration > 2:  # warm-up steps excluded
            timings["wait"] += time.perf_counter() - marks["batch"]
        marks["step"] = marks["batch"]

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iteration_completed(engine):
        if engine.state.iteration > 2:
            timings["steps"].append((time.perf_counter() - marks["step"], len(engine.state.output["image"])))

    trainer.run()
    total = sum(seconds for seconds, _ in timings["steps"])
    slices = sum(count for _, count in timings["steps"])
    return {"slices_per_s": slices / total, "data_wait_pct": 100.0 * timings["wait"] / total}


def time_inference(overrides: dict, checkpoint: str, output_dir: str) -> float:
    """Seconds for the first test subject: load, checks, predict, write (the stages: ``bench_inference.py``)."""
    parser = parse("inference.json", checkpoint=checkpoint, output_dir=output_dir, **overrides)
    parser["dataset"]["datalist"] = "$pipeline.data.load_datalist(@datalist, @section, @dataset_dir)[:1]"
    start = time.perf_counter()
    parser.get_parsed_content("evaluator").run()  # volumes are streamed: computed while the evaluator runs
    return time.perf_counter() - start


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--datalist", default=None, help="manifest (default: the bundle's)")
    arguments.add_argument("--dataset_dir", default=None)
    arguments.add_argument("--iterations", type=int, default=30)
    arguments.add_argument("--threads", type=int, default=2)
    options = arguments.parse_args()
    torch.set_num_threads(options.threads)
    data = {
        key: value for key, value in (("datalist", options.datalist), ("dataset_dir", options.dataset_dir)) if value
    }

    with tempfile.TemporaryDirectory() as scratch:
        run_dirs = {"ckpt_dir": f"{scratch}/models", "log_dir": f"{scratch}/logs", "val_interval": 10**6}
        hybrid = time_training(0.1, options.iterations, {**data, **run_dirs})
        supervised = time_training(0.0, options.iterations, {**data, **run_dirs})
        parser = parse("train.json", **data, **run_dirs)
        checkpoint = f"{scratch}/model.pt"
        torch.save(parser.get_parsed_content("network").state_dict(), checkpoint)
        inference_s = time_inference(data, checkpoint, f"{scratch}/maps")
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    rows = [
        ("training, supervised (slices/s)", f"{supervised['slices_per_s']:.2f}"),
        ("training, hybrid (slices/s)", f"{hybrid['slices_per_s']:.2f}"),
        (
            "hybrid / supervised time per slice (goal <= 1.05)",
            f"{supervised['slices_per_s'] / hybrid['slices_per_s']:.3f}",
        ),
        ("data wait, hybrid (% of step time, goal < 5)", f"{hybrid['data_wait_pct']:.2f}"),
        ("data wait, supervised (% of step time)", f"{supervised['data_wait_pct']:.2f}"),
        ("whole-volume inference, 1 subject, all steps (s, goal <= 20)", f"{inference_s:.1f}"),
        ("peak RSS (GiB)", f"{peak_rss_gib:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure'.ljust(width)} | value   (torch threads: {options.threads})")
    print("-" * (width + 20))
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


if __name__ == "__main__":
    main()
