"""Benchmark mixed precision on this machine's CPU: matmul peaks, the training step and inference in fp32 and bf16,
what the bf16 step spends its time on, and what was tried to bring it nearer the bf16 peak.

The network is the bundle's (``train.json``'s ``network``: ``BasicUNet`` with its output layer in fp32, its features,
9 input channels of the 2.5D default, the softplus) under :class:`pipeline.precision.AutocastInferer`, the wrapper every bundle path uses; the step is the
issue's (batch 8 of 128×128, Adam, L1 on the fp32 output), median of ``--repeats`` after 2 warm-up steps.

    python benchmarks/bench_precision.py [--threads 2] [--repeats 6] [--skip-compile]

Tables:

1. **peaks and steps** (fp32 and bf16 in turns, 3 rounds, the median): fp32 and bf16 ``torch.mm`` of 2048² (best of 10), the training step and inference (batch 32
   of 176×192, no grad) in both (and inference by ONNX Runtime, fp32, exported as the bundle exports it), FLOPs by ``torch.utils.flop_counter`` (2 per multiply-add), GFLOP/s, % of the
   matching peak, images/s and the bf16 speed-up; the same step with the features doubled.
2. **bf16 step variants**: the bundle's default against GroupNorm(C, C) for InstanceNorm (the same maths),
   channels-last memory, Adam ``fused=True``, and ``torch.compile`` (Inductor; as the network is, and with the
   decoder's zero pads skipped, which is what stops it); a variant that fails says why; the first step's time
   includes compiling.
3. **where the bf16 step's time goes**: ``torch.profiler`` over 4 steps, operators grouped by what they do, ms per
   step and share.

Goal (issue 34): the bf16 training step ≥ 2.5× the fp32 step, or table 3 shows what stands in the way.
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import tempfile
import time
import types

import torch
from bench_inference import flops, matmul_peak_gflops, median_seconds, parse  # benchmarks/ is on sys.path
from monai.networks.nets.basic_unet import UpCat

from pipeline.export import ONNX_CONVERTER_KWARGS, OnnxRuntimeNetwork, traceable
from pipeline.precision import AutocastInferer, cpu_supports_bf16

STEP_BATCH, STEP_SIZE = 8, (128, 128)
INFERENCE_BATCH, INFERENCE_SIZE = 32, (176, 192)

OPERATOR_GROUPS = {  # substring of a profiler operator name -> what it does (first match wins)
    "convolution_backward": "convolution, backward",
    "convolution": "convolution, forward",
    "copy_": "dtype casts and copies",
    "to_copy": "dtype casts and copies",
    "batch_norm": "instance normalisation (batch_norm kernels)",
    "group_norm": "group normalisation",
    "max_pool": "max pooling",
    "cat": "concatenation and padding",
    "pad": "concatenation and padding",
    "leaky_relu": "LeakyReLU",
    "Optimizer": "optimizer (Adam)",
    "upsample": "upsampling (transposed conv)",
}


def network(features=None) -> torch.nn.Module:
    overrides = {} if features is None else {"features": features}
    return copy.deepcopy(parse("train.json", **overrides).get_parsed_content("network"))


def without_zero_pads(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` whose ``BasicUNet`` decoder blocks skip their pad when it is zero (even-sized maps), which is what stops
    ``torch.compile``: Inductor's meta kernel of ``replication_pad2d_backward`` gets the strides of a zero pad wrong."""
    for module in net.modules():
        if isinstance(module, UpCat):
            module.forward = types.MethodType(_skip_zero_pad_forward, module)
    return net


def _skip_zero_pad_forward(self: UpCat, x: torch.Tensor, x_e: torch.Tensor) -> torch.Tensor:
    x_0 = self.upsample(x)
    pads = [p for i in range(x.dim() - 2) for p in (0, x_e.shape[-i - 1] - x_0.shape[-i - 1])]
    if any(pads):
        x_0 = torch.nn.functional.pad(x_0, pads, "replicate")
    return self.convs(torch.cat([x_e, x_0], dim=1))


def group_norms(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with each ``InstanceNorm2d`` replaced by ``GroupNorm(C, C)`` with the same affine weights."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.InstanceNorm2d):
                norm = torch.nn.GroupNorm(child.num_features, child.num_features, child.eps, affine=child.affine)
                norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    return net


class Step:
    """One training step of ``net`` at ``dtype`` (None: fp32) on a fixed random batch; ``variant`` changes it."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype | None, variant: str = "") -> None:
        in_channels = next(net.parameters()).shape[1]
        self.x = torch.rand(STEP_BATCH, in_channels, *STEP_SIZE)
        self.y = torch.rand(STEP_BATCH, 3, *STEP_SIZE)
        if variant == "group norm":
            net = group_norms(net)
        if variant == "channels-last":
            net = net.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(net.parameters(), 1e-3, fused=True if variant == "fused Adam" else None)
        if variant == "torch.compile, zero pads skipped":
            net = without_zero_pads(net)
        self.net = torch.compile(net) if variant.startswith("torch.compile") else net
        self.inferer = AutocastInferer(dtype)

    def __call__(self) -> None:
        loss = (self.inferer(self.x, self.net) - self.y).abs().mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def inference(net: torch.nn.Module, dtype: torch.dtype | None):
    x = torch.rand(INFERENCE_BATCH, next(net.parameters()).shape[1], *INFERENCE_SIZE)
    inferer, net = AutocastInferer(dtype), net.eval()

    def run() -> None:
        with torch.no_grad():
            inferer(x, net)

    return run


def onnx_inference(net: torch.nn.Module, scratch: str):
    """Inference of ``net`` (fp32 weights) exported as the bundle exports it and run by ONNX Runtime (fp32)."""
    in_channels = next(net.parameters()).shape[1]
    x = torch.rand(INFERENCE_BATCH, in_channels, *INFERENCE_SIZE)
    filepath = f"{scratch}/model.onnx"
    torch.onnx.export(traceable(net.eval()), (x[:1],), filepath, **ONNX_CONVERTER_KWARGS)
    session = OnnxRuntimeNetwork(filepath, in_channels=in_channels)
    return lambda: session(x)


def interleaved(runs: dict, repeats: int, rounds: int = 3) -> dict[str, float]:
    """Median seconds of each run over ``rounds`` rounds that take turns (each round: the median of ``repeats`` after
    2 warm-ups), so that a slow spell of this shared machine falls on both sides of a ratio."""
    medians = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            medians[name].append(median_seconds(run, repeats))
    return {name: statistics.median(values) for name, values in medians.items()}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def timing(flop: float, seconds: float, peak_gflops: float) -> str:
    return f"{seconds * 1e3:.0f} ms ({100 * flop / seconds / 1e9 / peak_gflops:.0f} % of peak)"


def peaks_and_steps(repeats: int) -> tuple[str, dict]:
    """Table 1 and the seconds of each case, ``{case: {"fp32": s, "bf16": s}}``."""
    with torch.autocast("cpu", enabled=False):
        peak = {"fp32": matmul_peak_gflops()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        peak["bf16"] = matmul_peak_gflops()
    matmul = ["2048² matmul", "", *(f"{peak[p]:.0f} GFLOP/s" for p in peak), "", ""]
    rows, seconds = [[*matmul, f"{peak['bf16'] / peak['fp32']:.2f}×"]], {}
    cases = [
        ("training step, batch 8 of 128²", lambda dtype: Step(network(), dtype), STEP_BATCH),
        ("inference, batch 32 of 176×192", lambda dtype: inference(network(), dtype), INFERENCE_BATCH),
        ("training step, features ×2", lambda dtype: Step(network([32, 32, 64, 128, 256, 32]), dtype), STEP_BATCH),
    ]
    for name, make, images in cases:
        work = flops(make(None))
        times = seconds[name] = interleaved({"fp32": make(None), "bf16": make(torch.bfloat16)}, repeats)
        rate = [f"{images / times[p]:.0f}" for p in times]
        rows.append([name, f"{work / 1e9:.1f}", *(timing(work, times[p], peak[p]) for p in times), *rate])
        rows[-1].append(f"{times['fp32'] / times['bf16']:.2f}×")
        if name.startswith("inference"):
            with tempfile.TemporaryDirectory() as scratch:
                onnx = median_seconds(onnx_inference(network(), scratch), repeats)
            speed_up = f"{times['fp32'] / onnx:.2f}× (vs eager fp32)"
            rows.append(
                [
                    f"{name}, ONNX Runtime fp32",
                    f"{work / 1e9:.1f}",
                    timing(work, onnx, peak["fp32"]),
                    "",
                    f"{images / onnx:.0f}",
                    "",
                    speed_up,
                ]
            )
    header = ["", "GFLOP", "fp32", "bf16 autocast", "images/s fp32", "images/s bf16", "speed-up"]
    return table(header, rows), seconds


def variants(repeats: int, fp32_step_s: float, skip_compile: bool) -> str:
    rows = []
    names = ["bundle default", "group norm", "channels-last", "fused Adam"] + (
        [] if skip_compile else ["torch.compile", "torch.compile, zero pads skipped"]
    )
    for variant in names:
        try:
            start = time.perf_counter()
            step = Step(network(), torch.bfloat16, "" if variant == "bundle default" else variant)
            step()
            first = time.perf_counter() - start
            seconds = median_seconds(step, repeats)
            rows.append([variant, f"{seconds * 1e3:.0f}", f"{fp32_step_s / seconds:.2f}×", f"{first:.1f}", ""])
        except Exception as error:  # a variant that cannot run is a result: its row says why
            reason = str(error).strip().splitlines()[0][:120]
            rows.append([variant, "fails", "", "", f"{type(error).__name__}: {reason}"])
    return table(["bf16 step variant", "ms", "vs fp32 step", "first step (s)", "note"], rows)


def profile(steps: int = 4) -> str:
    step = Step(network(), torch.bfloat16)
    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step()
    grouped, total = collections.Counter(), 0.0
    for event in profiler.key_averages():
        total += event.self_cpu_time_total
        group = next((g for key, g in OPERATOR_GROUPS.items() if key in event.key), "everything else")
        grouped[group] += event.self_cpu_time_total
    rows = [[group, f"{us / 1e3 / steps:.1f}", f"{100 * us / total:.0f}"] for group, us in grouped.most_common()]
    rows.append(["total (profiled)", f"{total / 1e3 / steps:.1f}", "100"])
    return table(["where the bf16 step's time goes", "ms per step", "%"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--skip-compile", action="store_true", help="leave out torch.compile (it compiles ~1 min)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, CPU bf16 units (AVX512-BF16/AMX): {cpu_supports_bf16()}, "
        f"AMX tiles: {torch.cpu._is_amx_tile_supported()}\n"
    )
    text, seconds = peaks_and_steps(args.repeats)
    print(text + "\n")
    print(variants(args.repeats, seconds["training step, batch 8 of 128²"]["fp32"], args.skip_compile) + "\n")
    print(profile())


if __name__ == "__main__":
    main()
