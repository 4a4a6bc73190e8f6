"""Cost of the hybrid loss relative to supervised-only training (CPU).

One training step = BasicUNet forward, softplus, loss, backward, for a batch of sagittal slices.
Prints a table of step times (after warm-up) for the supervised L1 loss and the hybrid loss (as published
and in the experiment's robust setting: smoothed edges, T2-weighted L1), their ratio (goal <= 1.05), and the forward+backward time of each loss alone (minimum over rounds).

    PYTHONPATH=. python benchmarks/bench_loss.py [--batch 8] [--height 256] [--width 176] [--repeats 7] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet

from pipeline.losses import HybridLoss
from pipeline.physics import MAP_UNIT_MS, synthesize

UNET_FEATURES = (32, 32, 64, 128, 256, 32)


def interleaved_times_ms(steps: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall times (ms) of each step in ``repeats`` timed rounds after ``warmup`` untimed ones.

    The steps take turns within every round (in alternating order), so drifts of the machine's load
    (other processes, thermal state) hit all of them alike instead of biasing their ratio.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + repeats):
        order = list(steps) if round_index % 2 == 0 else list(reversed(steps))
        for name in order:
            start = time.perf_counter()
            steps[name]()
            if round_index >= warmup:
                times[name].append(1e3 * (time.perf_counter() - start))
    return times


def make_batch(batch: int, height: int, width: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Network input and hybrid-loss target: plausible maps (units of 3 s) and images synthesised from them."""
    generator = torch.Generator().manual_seed(0)
    low = torch.tensor([0.25, 0.02, 0.6]).view(1, 3, 1, 1)
    high = torch.tensor([1.4, 0.7, 1.0]).view(1, 3, 1, 1)
    label = low + (high - low) * torch.rand(batch, 3, height, width, generator=generator)
    t1_ms, t2_ms, m0 = label[:, 0:1] * MAP_UNIT_MS, label[:, 1:2] * MAP_UNIT_MS, label[:, 2:3]
    image = torch.cat([synthesize(c, t1_ms, t2_ms, m0) for c in ("mprage", "tse", "flair")], dim=1)
    image = image / image.amax(dim=(-2, -1), keepdim=True)
    mask = torch.ones(batch, 1, height, width)
    return image, {"label": label, "image": image, "mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=176)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lambda-self", type=float, default=0.1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = BasicUNet(spatial_dims=2, in_channels=3, out_channels=3, features=UNET_FEATURES)
    image, target = make_batch(args.batch, args.height, args.width)
    losses = {
        "supervised L1": HybridLoss(lambda_self=0.0),
        f"hybrid (lambda={args.lambda_self}, mprage+tse)": HybridLoss(lambda_self=args.lambda_self),
        "hybrid, robust (edge sigma 1, T2 x10)": HybridLoss(
            lambda_self=args.lambda_self, map_weights=(1.0, 10.0, 1.0), edge_smoothing_sigma=1.0
        ),
    }

    def training_step(loss_function: HybridLoss) -> Callable[[], None]:
        def step() -> None:
            network.zero_grad(set_to_none=True)
            loss_function(F.softplus(network(image)), target).backward()

        return step

    def loss_only_step(loss_function: HybridLoss) -> Callable[[], None]:
        pred = target["label"].detach().clone().requires_grad_()

        def step() -> None:
            pred.grad = None
            loss_function(pred, target).backward()

        return step

    step_times = interleaved_times_ms({n: training_step(loss) for n, loss in losses.items()}, args.warmup, args.repeats)
    loss_times = interleaved_times_ms(
        {n: loss_only_step(loss) for n, loss in losses.items()}, args.warmup, 5 * args.repeats
    )

    baseline = step_times[next(iter(losses))]
    print(
        f"batch {args.batch}x3x{args.height}x{args.width}, BasicUNet features {UNET_FEATURES}, "
        f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved rounds after {args.warmup} warm-up"
    )
    # on a shared machine the minimum is the least disturbed measurement; the paired median shows the spread
    columns = ("step median (ms)", "step min (ms)", "ratio of minima", "paired median ratio", "loss alone (ms)")
    print(f"| {'loss':<38} | " + " | ".join(columns) + " |")
    print(f"|{'-' * 40}|" + "|".join("-" * (len(column) + 2) for column in columns) + "|")
    for name in losses:
        values = (
            f"{statistics.median(step_times[name]):.0f}",
            f"{min(step_times[name]):.0f}",
            f"{min(step_times[name]) / min(baseline):.3f}",
            f"{statistics.median(t / b for t, b in zip(step_times[name], baseline, strict=True)):.3f}",
            f"{min(loss_times[name]):.1f}",
        )
        cells = " | ".join(value.rjust(len(column)) for value, column in zip(values, columns, strict=True))
        print(f"| {name:<38} | {cells} |")


if __name__ == "__main__":
    main()
