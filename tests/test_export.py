"""Exported models: TorchScript (``ckpt_export``) and ONNX (``onnx_export``, run by onnxruntime) give the eager
network's outputs, and ``inference_torchscript.json`` / ``inference_onnx.json`` run them in the bundle."""

import os
import pathlib
import random
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet

from pipeline.data import input_channels
from pipeline.engine import write_model_card
from pipeline.export import OnnxRuntimeNetwork, export_command, traceable
from pipeline.physics import MAP_UNIT_MS
from pipeline.precision import channels_last
from tests import warm_python

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "qmap_hybrid"
CONFIGS = BUNDLE / "configs"
EXPORT_TIMEOUT_S = 300

ATOL = 1e-4
"""Exported vs eager network outputs (T1 / 3000 ms, T2 / 3000 ms, M0 of order 0.1-1): float32 kernels that sum in
another order differ by ~1e-6 (measured: <= 2e-6), far below this."""

BF16_MAP_RTOL, BF16_MAP_MAX_RTOL = 0.01, 0.2
"""bf16 (autocast) vs fp32 maps of the same weights, relative, the median over the brain and the largest: bf16 rounds
every activation to 8 mantissa bits (0.4 % steps) and the errors add up over the random network's ~20 layers; the
output layer is fp32 (measured on the tiny study, T1 / T2: median 0.25 / 0.35 %, 99.9th percentile 1.8 / 2.4 %,
largest 4.0 / 7.6 %)."""

CONTEXT = 1
"""Neighbour slices on either side of the exported network (``train.json``'s default, 2.5D)."""
CHANNELS = input_channels(CONTEXT)
"""Its input channels."""

NORM = "batch"
"""The network's normalisation (train.json's ``network_norm``), as the fixture's ``model.json`` says."""
EXPORTED = {"torchscript": ("inference_torchscript.json", "model.ts"), "onnx": ("inference_onnx.json", "model.onnx")}
"""Export kind: (its inference config, merged after inference.json; the exported file in ``ckpt_dir``)."""


def parse_network(*config_files, **overrides):
    """The ``network`` of inference.json merged with ``config_files``, for ``CONTEXT`` neighbour slices and ``NORM``
    (as the fixture's ``model.json`` says; ``test_engine`` reads the card itself)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in ("inference.json", *config_files)])
    parser["device"] = "$torch.device('cpu')"
    parser["context_slices"] = CONTEXT
    parser["network_norm"] = NORM
    for key, value in overrides.items():
        parser[key] = value
    return parser, parser.get_parsed_content("network")


def error_chain(error: BaseException) -> str:
    """The messages of ``error`` and its causes (MONAI's config parser wraps the error of a component)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``ckpt_dir`` with a random network's ``model.pt`` (seed 0) and its ``model.ts`` and ``model.onnx`` exported by
    ``python -m pipeline.export`` (the MONAI bundle commands of ``export_command``; both at once); returns (ckpt_dir,
    the eager network)."""
    ckpt_dir = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    _, network = parse_network()
    torch.save(network.state_dict(), ckpt_dir / "model.pt")
    write_model_card(ckpt_dir, slice_axis=1, context_slices=CONTEXT, network_norm=NORM)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for kind in EXPORTED:
        command = [
            sys.executable,
            "-m",
            "pipeline.export",
            kind,
            "--bundle_root",
            BUNDLE,
            "--ckpt_file",
            ckpt_dir / "model.pt",
        ]
        run = warm_python.run(command, capture_output=True, text=True, env=env, timeout=EXPORT_TIMEOUT_S)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return ckpt_dir, network.eval()


def test_export_commands_are_monai_bundle_commands(tmp_path):
    torchscript = export_command("torchscript", BUNDLE)
    assert torchscript[1:5] == ["-m", "monai.bundle", "ckpt_export", "network"]
    assert torchscript[torchscript.index("--filepath") + 1] == str(BUNDLE / "models" / "model.ts")
    write_model_card(tmp_path, slice_axis=1, context_slices=2, network_norm=NORM)
    onnx = export_command("onnx", BUNDLE, tmp_path / "model.pt")
    assert onnx[3:5] == ["onnx_export", "export_network"]
    assert onnx[onnx.index("--filepath") + 1] == str(tmp_path / "model.onnx")
    assert onnx[onnx.index("--ckpt_dir") + 1] == str(tmp_path)
    assert onnx[onnx.index("--checkpoint") + 1] == str(tmp_path / "model.pt")  # the configs read the card beside it
    assert eval(onnx[onnx.index("--input_shape") + 1])[1] == 15  # 3 images x (2 x 2 neighbours + the slice)
    with pytest.raises(ValueError, match="tensorrt"):
        export_command("tensorrt", BUNDLE)


@pytest.mark.parametrize("batch, height, width", [(2, 48, 64), (3, 45, 61)])
def test_exported_outputs_equal_eager_outputs(exported, batch, height, width):
    """Dynamic batch and slice size; 45 x 61 is odd at every level of the U-Net (the decoder pads)."""
    ckpt_dir, network = exported
    torchscript = torch.jit.load(ckpt_dir / "model.ts", map_location="cpu")
    onnx = OnnxRuntimeNetwork(ckpt_dir / "model.onnx", in_channels=CHANNELS)
    image = torch.rand(batch, CHANNELS, height, width, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        eager = network(image)
        outputs = {"torchscript": torchscript(image), "onnx": onnx(image)}
    assert eager.shape == (batch, 3, height, width) and 0.1 < eager.mean() < 1.0
    for kind, pred in outputs.items():
        assert pred.shape == eager.shape and pred.dtype == torch.float32, kind
        torch.testing.assert_close(pred, eager, rtol=0.0, atol=ATOL, msg=kind)


def test_traceable_changes_no_output_and_is_what_onnx_needs_for_odd_sizes(exported, tmp_path):
    ckpt_dir, network = exported
    image = torch.rand(1, CHANNELS, 45, 61)
    state = torch.load(ckpt_dir / "model.pt", weights_only=True)
    _, patched = parse_network("inference_onnx.json", network="@export_network")
    patched.load_state_dict(state)
    with torch.no_grad():  # in the eager network's memory layout (channels-last, channels_last): bit for bit
        assert torch.equal(channels_last(patched.eval())(image), network(image))

    def small_unet():
        return BasicUNet(spatial_dims=2, in_channels=CHANNELS, out_channels=3, features=(4, 4, 4, 4, 4, 4)).eval()

    for name, model in (("plain", small_unet()), ("traceable", traceable(small_unet()))):
        torch.onnx.export(model, (torch.rand(1, CHANNELS, 32, 32),), tmp_path / f"{name}.onnx", dynamo=False, **AXES)
    assert OnnxRuntimeNetwork(tmp_path / "traceable.onnx", in_channels=CHANNELS)(image).shape == (1, 3, 45, 61)
    with pytest.raises(RuntimeError, match="plain.onnx failed on a"):
        OnnxRuntimeNetwork(tmp_path / "plain.onnx", in_channels=CHANNELS)(image)


AXES = {
    "input_names": ["image"],
    "output_names": ["pred"],
    "dynamic_axes": {name: {0: "batch", 2: "height", 3: "width"} for name in ("image", "pred")},
}


def test_onnx_network_is_a_module_on_the_input_device_and_dtype(exported):
    ckpt_dir, network = exported
    onnx = OnnxRuntimeNetwork(ckpt_dir / "model.onnx", num_threads=1, in_channels=CHANNELS)
    assert onnx.eval() is onnx and onnx.to("cpu") is onnx and not list(onnx.parameters())
    image = torch.rand(1, CHANNELS, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        pred = onnx(image)
        assert pred.dtype == torch.float64 and pred.device == image.device
        torch.testing.assert_close(pred, network(image.float()).double(), rtol=0.0, atol=ATOL)
    with pytest.raises(ValueError, match=r"model.onnx takes \(B, 9, H, W\) slices, got \(1, 2, 32, 32\)"):
        onnx(torch.rand(1, 2, 32, 32))


def test_missing_or_mismatched_exports_fail_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "model.onnx")):
        OnnxRuntimeNetwork(tmp_path / "model.onnx")
    with pytest.raises(Exception) as missing:
        parse_network("inference_torchscript.json", ckpt_dir=str(tmp_path))
    assert str(tmp_path / "model.ts") in error_chain(missing.value)

    one_channel = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(4, 4, 4, 4, 4, 4)).eval()
    torch.onnx.export(one_channel, (torch.rand(1, 1, 32, 32),), tmp_path / "model.onnx", dynamo=False, **AXES)
    with pytest.raises(ValueError, match=r"model.onnx: expected one input of shape \(B, 3, H, W\), got \[\['batch', 1"):
        OnnxRuntimeNetwork(tmp_path / "model.onnx")
    torch.jit.script(one_channel).save(tmp_path / "model.ts")
    with pytest.raises(Exception) as mismatched:
        parse_network("inference_torchscript.json", ckpt_dir=str(tmp_path))
    assert f"exported model {tmp_path / 'model.ts'} fails on a (1, 9, 32, 32) input" in error_chain(mismatched.value)


@pytest.mark.parametrize("kind", list(EXPORTED))
def test_inference_configs_run_the_exported_file_without_checkpoint_loader(exported, kind):
    ckpt_dir, network = exported
    config, filename = EXPORTED[kind]
    parser, exported_network = parse_network(config, ckpt_dir=str(ckpt_dir))
    assert isinstance(exported_network, torch.jit.ScriptModule if kind == "torchscript" else OnnxRuntimeNetwork)
    assert parser.get_parsed_content("checkpoint") == str(ckpt_dir / filename)  # what derivatives record (sha-256)
    assert [handler["_target_"] for handler in parser["handlers"]] == ["StatsHandler"]
    inference = ConfigParser.load_config_file(str(CONFIGS / "inference.json"))
    assert parser["handlers"] == [h for h in inference["handlers"] if h["_target_"] != "CheckpointLoader"]
    if kind == "onnx":
        assert parser.get_parsed_content("amp") is False
    image = torch.rand(2, CHANNELS, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(exported_network(image), network(image), rtol=0.0, atol=ATOL)


@pytest.fixture
def global_rng():
    """Restores the global random states that a bundle's ``initialize`` (``set_determinism``) sets."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


def run_inference(config_files, **overrides):
    """``monai.bundle run inference`` in this process, QC and the input checks off."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in config_files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    overrides = {
        "bundle_root": str(BUNDLE),
        "device": "$torch.device('cpu')",
        "check_inputs": False,
        "qc": False,
        **overrides,
    }
    for key, value in overrides.items():
        parser[key] = value
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("inference")


def test_bundle_inference_with_exported_models_writes_the_eager_maps(exported, tiny_study, tmp_path, global_rng):
    """The written maps are in ms (network output x 3000 ms): the network tolerance ``ATOL`` becomes 0.3 ms (T1, T2
    of the random network ~1000-3000 ms; float32 maps there have a spacing of ~1e-4 ms). The exported models hold
    fp32 weights, so every run here is fp32 (``amp`` false); the default, bf16 where the CPU has it, is within
    ``BF16_MAP_RTOL`` of them."""
    ckpt_dir, _ = exported
    study = {"datalist": str(tiny_study), "dataset_dir": str(tiny_study.parent), "ckpt_dir": str(ckpt_dir)}
    run_inference(["inference.json"], output_dir=str(tmp_path / "eager"), amp="false", **study)
    run_inference(["inference.json"], output_dir=str(tmp_path / "bf16"), amp="bf16", **study)
    for kind, (config, _) in EXPORTED.items():
        run_inference(["inference.json", config], output_dir=str(tmp_path / kind), amp="false", **study)
    subjects = sorted(path.name for path in (tmp_path / "eager").iterdir() if path.is_dir())
    assert subjects
    for subject in subjects:
        for name in ("t1_map", "t2_map"):
            eager = nib.load(tmp_path / "eager" / subject / f"{name}.nii.gz").get_fdata(dtype=np.float32)
            assert np.median(eager[eager > 0]) > 100, "maps in ms"
            for kind in EXPORTED:
                maps = nib.load(tmp_path / kind / subject / f"{name}.nii.gz").get_fdata(dtype=np.float32)
                np.testing.assert_array_equal(maps > 0, eager > 0, err_msg=f"{kind} {subject} {name}: brain mask")
                np.testing.assert_allclose(maps, eager, rtol=0, atol=ATOL * MAP_UNIT_MS, err_msg=f"{kind} {name}")
            bf16 = nib.load(tmp_path / "bf16" / subject / f"{name}.nii.gz").get_fdata(dtype=np.float32)
            brain = eager > 0
            relative = np.abs(bf16[brain] / eager[brain] - 1)
            assert 0 < np.median(relative) < BF16_MAP_RTOL and relative.max() < BF16_MAP_MAX_RTOL, name  # 0: fp32 ran
