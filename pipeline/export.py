"""Exported models (TorchScript, ONNX) run inside the bundle's MONAI engines.

Exporting uses MONAI's bundle commands on the bundle's own configs (:func:`export_command` builds them):

* TorchScript -- ``python -m monai.bundle ckpt_export network ...`` scripts the network of ``inference.json``
  (the model zoo's ``models/model.ts``, with the metadata and config inside); ``inference_torchscript.json`` runs it
  (``torch.jit.load``).
* ONNX -- ``python -m monai.bundle onnx_export export_network ...`` traces ``export_network`` of
  ``inference_onnx.json``: the network made :func:`traceable`, with dynamic batch, height and width axes (the legacy
  TorchScript-based exporter, ``dynamo=False``: no ``onnxscript`` needed); ``inference_onnx.json`` runs it with
  onnxruntime through :class:`OnnxRuntimeNetwork`.

Why :func:`traceable`: MONAI's ``BasicUNet`` pads a decoder feature map by one pixel where the encoder map it is
concatenated with has an odd size, decided by a Python ``if`` on the shapes. Tracing (either ONNX exporter) records
the branch taken for the example input only, so the exported graph fails on slices of another parity (the bundle's
slices are the brain box plus a margin: any size). :func:`traceable` computes the same pads (0 or 1) from the shapes,
which the graph keeps as shape arithmetic: the exported model equals the eager one on every slice size.

* :class:`OnnxRuntimeNetwork` -- an ``onnxruntime.InferenceSession`` as a ``torch.nn.Module`` (what
  ``SupervisedEvaluator`` + ``SliceInferer`` call).
* :func:`check_network` -- a probe forward of a loaded exported model: a wrong export fails naming its file.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.nets.basic_unet import UpCat

from pipeline.data.slices import IMAGE_CHANNELS, input_channels
from pipeline.engine import trained_setting

OUT_CHANNELS = 3
"""Network output channels: T1 / 3000 ms, T2 / 3000 ms, normalised M0."""

ONNX_EXPORT_SIZE = (64, 64)
"""(H, W) of the example input (1, the model's input channels, H, W) the ONNX export traces; batch, height and width
stay dynamic."""

DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
"""The dynamic axes of the ONNX model's input ``image`` and output ``pred`` (B, C, H, W)."""

ONNX_CONVERTER_KWARGS = {
    "dynamo": False,
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {"image": DYNAMIC_AXES, "pred": DYNAMIC_AXES},
}
"""``--converter_kwargs`` of ``onnx_export`` (passed to ``torch.onnx.export`` with ``--use_trace True``)."""


def _upcat_forward(self: UpCat, x: torch.Tensor, x_e: torch.Tensor | None) -> torch.Tensor:
    """``UpCat.forward`` with the odd-size pads computed from the shapes (traced as shape arithmetic)."""
    x_0 = self.upsample(x)
    if x_e is None:
        return self.convs(x_0)
    if self.is_pad:
        pads: list = []
        for i in range(x.dim() - 2):  # last spatial dim first, as torch.nn.functional.pad takes them
            pads += [0, x_e.shape[-i - 1] - x_0.shape[-i - 1]]  # 1 where 2x max pooling dropped an odd row/column
        x_0 = torch.nn.functional.pad(x_0, pads, "replicate")
    return self.convs(torch.cat([x_e, x_0], dim=1))


def traceable(network: torch.nn.Module) -> torch.nn.Module:
    """``network`` with every ``BasicUNet`` decoder block (``UpCat``) padding by shape arithmetic (see the module
    docstring): the same outputs in eager mode, and a traced (ONNX) graph valid for every input size.

    Changed in place (the state dict and its keys stay as they are); returns ``network``.
    """
    for module in network.modules():
        if isinstance(module, UpCat):
            module.forward = types.MethodType(_upcat_forward, module)
    return network


def export_command(
    kind: str,
    bundle_root: str | os.PathLike,
    ckpt_file: str | os.PathLike | None = None,
    filepath: str | os.PathLike | None = None,
    executable: str = sys.executable,
) -> list[str]:
    """The MONAI bundle command (argv) exporting the bundle's ``model.pt`` to TorchScript or ONNX.

    Args:
        kind: ``"torchscript"`` (``ckpt_export`` of ``network``, scripted) or ``"onnx"`` (``onnx_export`` of
            ``export_network``, traced with dynamic batch/height/width, :data:`ONNX_CONVERTER_KWARGS`).
        bundle_root: the bundle folder (``configs/`` in it).
        ckpt_file: the state dict of the network (default ``<bundle_root>/models/model.pt``).
        filepath: the exported file (default ``models/model.ts`` / ``models/model.onnx`` beside ``ckpt_file``).
        executable: the Python interpreter.
    """
    configs = os.path.join(os.fspath(bundle_root), "configs")
    ckpt_file = os.fspath(ckpt_file or os.path.join(os.fspath(bundle_root), "models", "model.pt"))
    common = ["--ckpt_file", ckpt_file, "--meta_file", os.path.join(configs, "metadata.json")]
    # the configs read the model's card (model.json) beside their `checkpoint`, which ckpt_export's --ckpt_file is not
    common += ["--ckpt_dir", os.path.dirname(ckpt_file), "--checkpoint", ckpt_file]
    if kind == "torchscript":
        filepath = os.fspath(filepath or os.path.join(os.path.dirname(ckpt_file), "model.ts"))
        command = ["ckpt_export", "network", "--filepath", filepath, *common]
        command += ["--config_file", os.path.join(configs, "inference.json")]
    elif kind == "onnx":
        filepath = os.fspath(filepath or os.path.join(os.path.dirname(ckpt_file), "model.onnx"))
        config_files = [os.path.join(configs, name) for name in ("inference.json", "inference_onnx.json")]
        command = ["onnx_export", "export_network", "--filepath", filepath, *common]
        command += ["--config_file", repr(config_files), "--use_trace", "True"]
        shape = [1, input_channels(trained_setting(ckpt_file, "context_slices")), *ONNX_EXPORT_SIZE]
        command += ["--input_shape", repr(shape), "--converter_kwargs", repr(ONNX_CONVERTER_KWARGS)]
    else:
        raise ValueError(f"kind must be 'torchscript' or 'onnx', got {kind!r}.")
    return [executable, "-m", "monai.bundle", *command]


def _onnx_providers() -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeNetwork(torch.nn.Module):
    """An exported ONNX model run by onnxruntime, called like the eager network (by ``SupervisedEvaluator`` +
    ``SliceInferer``): ``(B, in_channels, H, W)`` normalised weighted slices -> ``(B, 3, H, W)`` maps (T1 / 3000 ms,
    T2 / 3000 ms, normalised M0) on the input's device, in its dtype (computed in float32).

    ``eval()``, ``train()`` and ``to()`` change nothing (no parameters): the session holds the weights.

    Args:
        filepath: the ``.onnx`` file (e.g. ``models/model.onnx`` written by ``onnx_export``).
        providers: onnxruntime execution providers; default CUDA where onnxruntime has it, then CPU.
        num_threads: intra-op threads of the CPU provider; default ``torch.get_num_threads()``.
        in_channels: input channels the model must take.
        out_channels: output channels the model must give.

    Raises:
        FileNotFoundError: no ``filepath``.
        ValueError: the model does not have one (B, in_channels, H, W) input and one (B, out_channels, H, W) output.
    """

    def __init__(
        self,
        filepath: str | os.PathLike,
        providers: Sequence[str] | None = None,
        num_threads: int | None = None,
        in_channels: int = IMAGE_CHANNELS,
        out_channels: int = OUT_CHANNELS,
    ) -> None:
        super().__init__()
        import onnxruntime

        self.filepath = os.fspath(filepath)
        if not os.path.isfile(self.filepath):
            raise FileNotFoundError(
                f"ONNX model {self.filepath} not found: export it first (python -m monai.bundle onnx_export "
                "export_network ..., see pipeline.export.export_command)."
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            self.filepath, sess_options=options, providers=list(providers or _onnx_providers())
        )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        expected = {"input": (inputs, in_channels), "output": (outputs, out_channels)}
        for name, (args, channels) in expected.items():
            if len(args) != 1 or len(args[0].shape) != 4 or args[0].shape[1] != channels:
                shapes = [arg.shape for arg in args]
                raise ValueError(
                    f"ONNX model {self.filepath}: expected one {name} of shape (B, {channels}, H, W), got {shapes}."
                )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (B, in_channels, H, W) -> (B, out_channels, H, W), on ``x``'s device and in its dtype."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ONNX model {self.filepath} takes (B, {self.in_channels}, H, W) slices, got {tuple(x.shape)}."
            )
        image = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        try:
            (pred,) = self.session.run([self.output_name], {self.input_name: image})
        except Exception as e:  # onnxruntime's own exception types
            raise RuntimeError(
                f"ONNX model {self.filepath} failed on a {tuple(x.shape)} input: {e}. An export of a network that is "
                "not pipeline.export.traceable accepts only slices whose sizes halve like the export's example input "
                "(export `export_network` of inference_onnx.json)."
            ) from e
        return torch.from_numpy(pred).to(device=x.device, dtype=x.dtype)

    def extra_repr(self) -> str:
        return f"{self.filepath!r}, providers={self.session.get_providers()}"


def check_network(
    network, filepath: str | os.PathLike, in_channels: int = IMAGE_CHANNELS, out_channels: int = OUT_CHANNELS
):
    """Runs a loaded exported model (e.g. ``torch.jit.load`` of ``model.ts``) on one (1, in_channels, 32, 32) zero
    slice on its device and returns it, or raises a ``ValueError`` naming ``filepath`` if that fails or does not give
    (1, out_channels, 32, 32)."""
    try:
        device = next(iter(network.parameters())).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    probe = torch.zeros(1, in_channels, 32, 32, device=device)
    try:
        with torch.no_grad():
            shape = tuple(network(probe).shape)
    except Exception as e:
        raise ValueError(f"exported model {os.fspath(filepath)} fails on a {tuple(probe.shape)} input: {e}") from e
    if shape != (1, out_channels, 32, 32):
        raise ValueError(
            f"exported model {os.fspath(filepath)}: a {tuple(probe.shape)} input gives {shape}, expected "
            f"(1, {out_channels}, 32, 32)."
        )
    return network


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.export {torchscript,onnx} [--bundle_root B] [--ckpt_file F] [--filepath OUT]``: runs the
    MONAI bundle command of :func:`export_command` (printed first, to be run by hand elsewhere)."""
    import argparse
    import shlex
    import subprocess

    parser = argparse.ArgumentParser(prog="python -m pipeline.export", description=main.__doc__.split(":")[0])
    parser.add_argument("kind", choices=["torchscript", "onnx"])
    parser.add_argument("--bundle_root", default=os.path.join("bundles", "qmap_hybrid"))
    parser.add_argument("--ckpt_file", default=None, help="default: <bundle_root>/models/model.pt")
    parser.add_argument("--filepath", default=None, help="default: model.ts / model.onnx beside the checkpoint")
    args = parser.parse_args(argv)
    command = export_command(args.kind, args.bundle_root, args.ckpt_file, args.filepath)
    print(shlex.join(command))
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
