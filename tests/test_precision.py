"""Mixed precision (pipeline.precision): the one ``amp`` switch, the network in bf16 and everything after it in fp32."""

import copy
import pathlib

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.networks.nets import BasicUNet

from pipeline import precision
from pipeline.engine import NeighbourSliceInferer
from pipeline.losses import HybridLoss
from pipeline.precision import AutocastInferer, autocast_dtype

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "bundles" / "qmap_hybrid" / "configs"

BF16_LOSS_RTOL = 0.005
"""bf16 and fp32 losses of one batch agree within 0.5 %: bf16 rounds each activation to 8 mantissa bits (0.4 %
steps), and the rounding errors mostly average out over a slice (measured: 0.01-0.05 % on three batches of the tiny
study, untrained network)."""


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend the CPU has, or lacks, bf16 units: ``bf16_cpu(True)``."""

    def set_support(supported: bool) -> None:
        monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: supported)

    return set_support


@pytest.mark.parametrize("supported", [True, False])
def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(bf16_cpu, supported):
    bf16_cpu(supported)
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if supported else None)
    assert autocast_dtype("false", "cpu") is autocast_dtype(False, "cpu") is None


def test_the_cpu_check_reads_pytorchs_capability_flags():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert precision.cpu_supports_bf16() is bool(expected)


def test_asking_for_a_precision_the_device_lacks_is_a_clear_error(bf16_cpu):
    bf16_cpu(False)
    with pytest.raises(ValueError, match=r"amp='bf16': cpu has no fast bf16.*AVX512-BF16 or AMX-BF16.*neither"):
        autocast_dtype("bf16", "cpu")
    with pytest.raises(ValueError, match=r"amp='true': cpu has no fast low precision.*--amp false"):
        autocast_dtype("true", "cpu")
    bf16_cpu(True)
    assert autocast_dtype("bf16", "cpu") == autocast_dtype(True, "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="amp='fp16': cpu has no fast fp16"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match=r"amp must be one of \('auto', 'true', 'false', 'bf16', 'fp16'\).*'half'"):
        autocast_dtype("half", "cpu")


@pytest.mark.parametrize("bf16_gpu, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_takes_bf16_where_supported_and_fp16_with_a_grad_scaler_elsewhere(monkeypatch, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    dtype = autocast_dtype("auto", "cuda:0")
    assert dtype == expected
    assert precision.needs_grad_scaler(dtype) is (not bf16_gpu)
    assert autocast_dtype("fp16", "cuda:0") == torch.float16  # every CUDA device runs fp16


def test_the_network_runs_in_bf16_and_hands_back_fp32():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus())
    seen = []
    network[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    x = torch.rand(2, 3, 8, 8)
    out = AutocastInferer(torch.bfloat16)(x, network)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert torch.equal(AutocastInferer(None)(x, network), network(x))
    assert seen[-1] == torch.float32


def test_the_loss_stays_fp32_inside_an_autocast_region():
    """MONAI's CUDA ``amp`` runs the loss under autocast; the loss must not drop to low precision there."""
    loss = HybridLoss(lambda_self=0.1, contrasts=("mprage", "tse"))
    pred = torch.rand(2, 3, 16, 16, dtype=torch.float32) * 0.5 + 0.01
    target = {"label": torch.rand(2, 3, 16, 16), "image": torch.rand(2, 3, 16, 16) + 0.1}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = loss(pred, target)
    outside = loss(pred, target)
    assert inside.dtype == torch.float32 and torch.equal(inside, outside)


def test_the_volume_inferer_is_wrapped_and_keeps_its_slices(tmp_path):
    from pipeline.engine import write_model_card

    write_model_card(tmp_path, slice_axis=1, context_slices=1)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"checkpoint": str(tmp_path / "model.pt"), "amp": "false"})
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, AutocastInferer) and inferer.dtype is None
    assert isinstance(inferer.inferer, NeighbourSliceInferer) and inferer.inferer.context_slices == 1


@pytest.fixture(scope="module")
def tiny_batch(tiny_study):
    """One training batch of the tiny study, the train config's network (seeded) and loss."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"datalist": str(tiny_study), "dataset_dir": str(tiny_study.parent), "batch_size": 4})
    torch.manual_seed(0)
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    network = parser.get_parsed_content("network_def")
    loss = parser.get_parsed_content("loss")
    inputs, target = parser.get_parsed_content("train#prepare_batch")(batch)
    return parser, network, loss, inputs, target


@pytest.mark.parametrize("amp, expected", [("auto", "device"), ("false", None), ("bf16", torch.bfloat16)])
def test_the_switch_reaches_training_and_validation(tiny_batch, bf16_cpu, amp, expected):
    bf16_cpu(True)
    parser = tiny_batch[0]
    parser["amp"] = amp
    expected = torch.bfloat16 if expected == "device" else expected
    for engine in ("train#trainer", "validate#evaluator"):
        assert parser.get_parsed_content(f"{engine}#inferer").dtype == expected
    assert parser.get_parsed_content("train#trainer#amp") is False  # bf16 needs no GradScaler


def test_training_and_adaptation_default_to_fp32_and_inference_to_the_devices_low_precision(bf16_cpu, tmp_path):
    """bf16 training cost the hybrid's T1 detail in every seed and diverged in one of six runs
    (docs/results/precision/): training and adaptation keep fp32 unless asked; inference runs in bf16 where it can."""
    from pipeline.engine import write_model_card

    bf16_cpu(True)
    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    assert train.get_parsed_content("train#trainer#inferer").dtype is None
    write_model_card(tmp_path, slice_axis=1, context_slices=1)
    inference = ConfigParser()
    inference.read_config([str(CONFIGS / "inference.json"), str(CONFIGS / "adapt.json")])
    inference["checkpoint"] = str(tmp_path / "model.pt")
    assert inference.get_parsed_content("inferer").dtype == torch.bfloat16
    assert inference.get_parsed_content("adaptation#autocast_dtype") is None


def test_bf16_and_fp32_losses_of_one_batch_agree(tiny_batch):
    _, network, loss, inputs, target = tiny_batch
    with torch.no_grad():
        fp32 = loss(AutocastInferer(None)(inputs, network), target)
        bf16 = loss(AutocastInferer(torch.bfloat16)(inputs, network), target)
    assert fp32 > 0
    torch.testing.assert_close(bf16, fp32, rtol=BF16_LOSS_RTOL, atol=0.0)
    assert not torch.equal(bf16, fp32)  # the network did run in bf16


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_tiny_training_converges_in_fp32_and_bf16(dtype):
    """MONAI's ``SupervisedTrainer`` with the autocast inferer fits one fixed batch: the loss falls to a third."""
    torch.manual_seed(0)
    network = torch.nn.Sequential(BasicUNet(2, 3, 3, features=(8, 8, 16, 32, 64, 8)), torch.nn.Softplus())
    image = torch.rand(4, 3, 32, 32)
    label = torch.stack([image[:, 0] * 0.3, image[:, 1] * 0.1, image[:, 2]], dim=1)
    data = [{"image": image, "label": label}]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=60,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-2),
        loss_function=torch.nn.L1Loss(),
        inferer=AutocastInferer(dtype),
        decollate=False,
    )
    losses = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output["loss"].item())
    )
    trainer.run()
    assert losses[-1] < losses[0] / 3, losses[::10]


def test_the_output_layer_computes_in_fp32_so_bf16_maps_are_not_posterised():
    """Under bf16 autocast the bundle network's last convolution runs in fp32: its output takes continuous values,
    where a bf16 output layer gives a few hundred (8 mantissa bits per binade), and the state dict is a plain
    ``Sequential(BasicUNet, Softplus)``'s (checkpoints of earlier bundles load)."""
    torch.manual_seed(0)
    plain = torch.nn.Sequential(BasicUNet(2, 9, 3, features=(16, 16, 32, 64, 128, 16)), torch.nn.Softplus()).eval()
    full = torch.nn.Sequential(precision.with_full_precision_output(copy.deepcopy(plain[0])), torch.nn.Softplus())
    full.load_state_dict(plain.state_dict(), strict=True)
    seen = []
    full[0].final_conv.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    x = torch.rand(1, 9, 64, 64)
    with torch.no_grad():
        posterised = AutocastInferer(torch.bfloat16)(x, plain)
        continuous = AutocastInferer(torch.bfloat16)(x, full)
        exact = AutocastInferer(None)(x, full)
    assert seen == [torch.float32, torch.float32]
    assert posterised[:, 0].unique().numel() < 600 < 3000 < continuous[:, 0].unique().numel()
    assert (continuous - exact).abs().mean() < (posterised - exact).abs().mean()
    torch.testing.assert_close(exact, plain(x))  # outside autocast it is the plain network
    with pytest.raises(TypeError, match="Conv2d final_conv"):
        precision.with_full_precision_output(torch.nn.Linear(2, 2))


def test_the_inference_network_is_channels_last_with_the_same_outputs_and_state_dict():
    """inference.json's network keeps its weights in channels-last memory (faster oneDNN convolutions) and gives the
    outputs of the same weights in the default layout; its state dict loads into and from a plain network."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update(
        {"device": "$torch.device('cpu')", "slice_axis": 1, "context_slices": 1, "intensity_reference": "csf"}
    )
    parser["network_norm"] = "batch"
    network = parser.get_parsed_content("network").eval()
    conv = next(module for module in network.modules() if isinstance(module, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    plain = torch.nn.Sequential(
        BasicUNet(2, 9, 3, features=(16, 16, 32, 64, 128, 16), norm="batch"), torch.nn.Softplus()
    )
    plain.load_state_dict(network.state_dict())
    x = torch.rand(2, 9, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(network(x), plain.eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("switch, expected", [(None, False), ("true", True), ("false", False)])
def test_training_in_channels_last_is_one_switch_off_by_default(switch, expected):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["device"] = "$torch.device('cpu')"
    if switch is not None:
        parser["channels_last"] = switch  # as the command line gives it
    conv = next(
        module for module in parser.get_parsed_content("network").modules() if isinstance(module, torch.nn.Conv2d)
    )
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expected
