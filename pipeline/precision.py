"""Mixed precision: the network in bf16 (or fp16) where the hardware has the units for it, everything else in fp32.

One switch, ``amp`` in the bundle configs (``--amp auto|true|false|bf16|fp16``), resolved by :func:`autocast_dtype`:

* a CPU with bf16 instructions (AVX512-BF16 or AMX-BF16, detected by PyTorch, not assumed): bf16;
* a CUDA device: bf16 where it supports it (Ampere and newer), fp16 otherwise;
* anything else (an older CPU, ``false``): fp32, no autocast.

The bundle's defaults: inference ``auto``; training and adaptation ``false`` (fp32), because bf16 training cost the
hybrid's T1 detail in every seed (``docs/results/precision/``).

MONAI 1.6's engines hard-code ``torch.autocast("cuda")`` and a CUDA ``GradScaler`` behind their own ``amp`` option, so
they cannot run the CPU's matrix units. :class:`AutocastInferer` puts ``torch.autocast`` around the *network's
forward only*, inside whichever inferer the engine uses (training, validation, inference, adaptation), and hands the
output back as fp32: the signal models, the losses and the metrics never see a bf16 tensor. Only fp16 needs loss
scaling against underflowing gradients; :func:`needs_grad_scaler` tells the trainer to switch on MONAI's own CUDA
``GradScaler`` then.

The network's **output layer computes in fp32** (:func:`with_full_precision_output`). bf16 keeps 8 bits of mantissa
(steps of 0.4 %), and the softplus that makes the maps positive compresses its input: T2 ≈ 80 ms is softplus(-3.6) in
network units, where bf16's step of 1/64 becomes 1.25 ms (1.5 %). With a bf16 output layer a trained model's maps of a
whole brain took ~520 distinct T2 and ~540 distinct T1 values (posterised) and differed from fp32 by 0.55 % (T2,
median); with the fp32 output layer they are continuous and differ by 0.33 %, the bf16 rounding of the features.

Exported models (TorchScript, ONNX) hold the fp32 weights; ONNX Runtime runs them in fp32.
"""

from __future__ import annotations

import logging

import torch
from monai.inferers import Inferer, SimpleInferer

from pipeline.engine import as_flag

AMP_CHOICES = ("auto", "true", "false", "bf16", "fp16")
"""What ``amp`` accepts (also Python booleans). ``auto`` and ``true`` pick the device's best low precision; ``auto``
falls back to fp32 where there is none, ``true`` refuses."""


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16), as PyTorch's own CPU-capability
    check reports them. Without them, bf16 autocast runs emulated and is slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def device_low_precision(device: torch.device | str) -> torch.dtype | None:
    """The low-precision dtype ``device`` runs fast: bf16 on a bf16-capable CPU or CUDA device, fp16 on an older
    CUDA device, None (fp32 only) otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast_dtype(amp: bool | str, device: torch.device | str) -> torch.dtype | None:
    """The network's autocast dtype for the config switch ``amp`` on ``device``; None means fp32 (no autocast).

    Args:
        amp: ``"auto"`` (the device's low precision where it has one, else fp32), ``true`` (the same, but an error
            where there is none), ``false`` (fp32), ``"bf16"`` or ``"fp16"`` (that dtype, checked against the device).
            Command-line text (``--amp false``) and Python booleans are both accepted.
        device: where the network runs.

    Raises:
        ValueError: an unknown value, or a precision ``device`` cannot run fast (e.g. bf16 on a CPU without
            AVX512-BF16/AMX, fp16 on a CPU), naming the device and the values that work.
    """
    device = torch.device(device)
    text = str(amp).strip().lower()
    supported = device_low_precision(device)
    if text == "auto":
        return supported
    if text in ("bf16", "fp16"):
        requested = {"bf16": torch.bfloat16, "fp16": torch.float16}[text]
        usable = {supported} | ({torch.float16} if device.type == "cuda" else set())
        if requested not in usable:
            raise ValueError(
                f"amp={amp!r}: {device} has no fast {text} ({_device_note(device)}); use --amp auto or --amp false."
            )
        return requested
    try:
        enabled = as_flag(amp)
    except ValueError:
        raise ValueError(f"amp must be one of {AMP_CHOICES} (or a bool), got {amp!r}.") from None
    if enabled and supported is None:
        raise ValueError(f"amp={amp!r}: {device} has no fast low precision ({_device_note(device)}); use --amp false.")
    return supported if enabled else None


def _device_note(device: torch.device) -> str:
    if device.type == "cpu":
        return "bf16 needs a CPU with AVX512-BF16 or AMX-BF16; this one has " + (
            "them" if cpu_supports_bf16() else "neither"
        )
    return f"device type {device.type}"


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """Whether training in ``dtype`` needs loss scaling (fp16's 5-bit exponent underflows small gradients; bf16 has
    fp32's range). The trainer's MONAI ``amp`` option, which brings its CUDA ``GradScaler``."""
    return dtype == torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` (None): what a run records and prints."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[dtype]


def log_precision(device: torch.device | str, dtype: torch.dtype | None) -> str:
    """Log (``pipeline.precision``, INFO) and return the precision the network runs in on ``device``."""
    name = precision_name(dtype)
    logging.getLogger(__name__).info("network precision on %s: %s (--amp false for fp32)", device, name)
    return name


class FullPrecisionConv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` that computes in fp32 inside an autocast region (its input is cast up): the network's output
    layer (module docstring). Parameters and state-dict keys are ``Conv2d``'s. Scriptable (TorchScript) and traceable
    (ONNX): outside autocast it is ``Conv2d`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.autocast takes a constant device type in TorchScript: both devices' autocast are switched off
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return self._conv_forward(x.float(), self.weight, self.bias)


def with_full_precision_output(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` (MONAI ``BasicUNet``) with its output layer ``final_conv`` computing in fp32
    (:class:`FullPrecisionConv2d`, same weights and state-dict keys); changed in place and returned.

    Raises:
        TypeError: when ``network`` has no 2D ``final_conv`` (another network needs its own output layer kept in fp32).
    """
    layer = getattr(network, "final_conv", None)
    if type(layer) is not torch.nn.Conv2d:
        raise TypeError(f"expected a 2D BasicUNet with a Conv2d final_conv, got {type(network).__name__}.{layer!r}.")
    full = FullPrecisionConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
    full.load_state_dict(layer.state_dict())
    network.final_conv = full.to(layer.weight.device)
    return network


def channels_last(network: torch.nn.Module, enabled: bool | str = True) -> torch.nn.Module:
    """``network`` with its weights in channels-last memory (NHWC) when ``enabled`` (a flag, also ``"false"`` from the
    command line), in place and returned: the same outputs to fp32's and bf16's rounding, faster convolutions for a
    batch-normalised ``BasicUNet`` on the CPU's oneDNN kernels (``benchmarks/README.md``: eager inference 24.4 -> 12.5 ms
    per slice in fp32, 14.6 -> 9.4 in bf16; a fp32 training step 1.38x). ``inference.json`` enables it; ``train.json``
    has it as ``channels_last`` (off: a training in channels-last follows another rounding trajectory)."""
    return network.to(memory_format=torch.channels_last) if as_flag(enabled) else network


class AutocastInferer(Inferer):
    """Runs ``inferer`` (default: MONAI's ``SimpleInferer``) with the network under ``torch.autocast(dtype)`` and
    returns its output as fp32.

    The autocast covers the network's forward (and, through autograd, its backward) only: what the engine does with
    the output -- the loss, the metrics, the post-processing -- runs in fp32. With ``dtype`` None it is ``inferer``
    itself.

    Args:
        dtype: the autocast dtype (:func:`autocast_dtype`), or None for fp32.
        inferer: the inferer to wrap, e.g. :class:`pipeline.engine.NeighbourSliceInferer` for whole volumes.

    ``inputs`` (B, C, ...) on the network's device -> the wrapped inferer's output, fp32.
    """

    def __init__(self, dtype: torch.dtype | None = None, inferer: Inferer | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.inferer = SimpleInferer() if inferer is None else inferer

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if self.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            output = self.inferer(inputs, network, *args, **kwargs)
        return output.float()
