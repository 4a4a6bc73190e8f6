"""pipeline.engine helpers that the bundle's engines use: writing maps back onto the input's grid, the model card."""

import json
import pathlib

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from pipeline.engine import NeighbourSliceInferer, network_norm, paste_on_grid, trained_setting, write_model_card

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "bundles" / "qmap_hybrid" / "configs"


@pytest.mark.parametrize("seed", range(4))
def test_paste_on_grid_equals_monai_resampling_for_permuted_flipped_shifted_grids(seed):
    """The model grid (RAS, cropped or padded) → the T1w file's grid (any axis order and flips): the index copy equals
    MONAI's ResampleToMatch, nearest and bilinear alike; a sub-voxel shift or an oblique grid needs a resampling."""
    rng = np.random.default_rng(seed)
    source_shape, target_shape = (9, 11, 7), (12, 10, 13)
    permutation = rng.permutation(3)
    rotation = np.zeros((3, 3))
    rotation[np.arange(3), permutation] = rng.choice([-1.0, 1.0], 3)
    target_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    target_affine[:3, :3] = np.diag(rng.uniform(0.8, 1.2, 3))
    target_affine[:3, 3] = rng.uniform(-50, 50, 3)
    source_to_target = np.eye(4)
    centred = (np.array(target_shape) - 1) / 2 - rotation @ ((np.array(source_shape) - 1) / 2)
    source_to_target[:3, :3], source_to_target[:3, 3] = rotation, np.round(centred) + rng.integers(-4, 5, 3)
    source_affine = target_affine @ source_to_target
    volume = rng.random((2, *source_shape)).astype(np.float32)
    reference = MetaTensor(torch.zeros(1, *target_shape), affine=torch.as_tensor(target_affine))
    pasted = paste_on_grid(volume, source_affine, target_affine, target_shape)
    for mode in ("nearest", "bilinear"):
        resampled = ResampleToMatch(padding_mode="zeros")(
            MetaTensor(torch.as_tensor(volume), affine=torch.as_tensor(source_affine)), reference, mode=mode
        )
        np.testing.assert_allclose(pasted, np.asarray(resampled), atol=1e-5)
    assert 0 < np.count_nonzero(pasted) <= volume.size
    half_voxel = source_affine.copy()
    half_voxel[:3, 3] += target_affine[:3, :3] @ np.array([0.5, 0, 0])
    assert paste_on_grid(volume, half_voxel, target_affine, target_shape) is None
    oblique = source_affine.copy()
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[0.8, 0.6, 0], [-0.6, 0.8, 0], [0, 0, 1]])
    assert paste_on_grid(volume, oblique, target_affine, target_shape) is None


def test_inference_cuts_the_slices_the_model_was_trained_on(tmp_path):
    """inference.json's ``slice_axis`` and ``context_slices`` are those in ``model.json`` beside the checkpoint, and
    its network takes that many channels; an explicit override wins."""
    write_model_card(tmp_path, slice_axis=0, context_slices=1)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["checkpoint"] = str(tmp_path / "model.pt")
    assert parser.get_parsed_content("slice_axis") == 0
    assert parser.get_parsed_content("network_def").conv_0.conv_0.conv.in_channels == 9
    inferer = parser.get_parsed_content("slice_inferer")
    assert isinstance(inferer, NeighbourSliceInferer) and (inferer.spatial_dim, inferer.context_slices) == (0, 1)
    parser["slice_axis"] = 2
    assert parser.get_parsed_content("slice_axis") == 2


def test_a_model_without_its_card_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.json is missing.*model\.onnx.*--slice_axis.*--context_slices"):
        trained_setting(tmp_path / "model.onnx", "slice_axis")


def test_a_card_from_before_context_slices_reads_as_2d_slices(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"slice_axis": 1}))  # bundle 0.8.0's card
    assert trained_setting(tmp_path / "model.pt", "slice_axis") == 1
    assert trained_setting(tmp_path / "model.pt", "context_slices") == 0


def test_a_resumed_run_keeps_its_slices(tmp_path):
    card = write_model_card(tmp_path, slice_axis=2)
    assert trained_setting(tmp_path / "model.pt", "slice_axis") == 2
    assert write_model_card(tmp_path, slice_axis=2, resume="true") == card  # the same slices: resumes
    with pytest.raises(
        ValueError, match=r"model\.json: the run being resumed .*--slice_axis 2 \(slice_axis 2: axial\)"
    ):
        write_model_card(tmp_path, slice_axis=1, resume="true")
    with pytest.raises(ValueError, match=r"--context_slices 0 "):
        write_model_card(tmp_path, slice_axis=2, resume="true", context_slices=1)
    with pytest.raises(ValueError, match=r"--intensity_reference brain"):
        write_model_card(tmp_path, slice_axis=2, resume="true", intensity_reference="csf")
    with pytest.raises(ValueError, match=r"--mask_inputs False"):
        write_model_card(tmp_path, slice_axis=2, resume="true", mask_inputs="true")
    recorded = {
        "slice_axis": 2,
        "context_slices": 0,
        "intensity_reference": "brain",
        "network_norm": "instance",
        "mask_inputs": False,
    }
    assert json.loads(card.read_text()) == recorded  # untouched by the refused resumes
    write_model_card(tmp_path, slice_axis=1, context_slices=1, intensity_reference="csf")  # a new run (--overwrite)
    assert trained_setting(tmp_path / "model.pt", "slice_axis") == 1
    assert trained_setting(tmp_path / "model.pt", "context_slices") == 1
    assert trained_setting(tmp_path / "model.pt", "intensity_reference") == "csf"
    card.write_text(json.dumps({"slice_axis": 1}))  # a card of bundle 0.7: the settings added since at their defaults
    assert trained_setting(tmp_path / "model.pt", "intensity_reference") == "brain"
    assert trained_setting(tmp_path / "model.pt", "network_norm") == "instance"
    assert trained_setting(tmp_path / "model.pt", "mask_inputs") is False


def test_network_norm_names_are_basic_unet_norms():
    assert network_norm("instance") == ("instance", {"affine": True})  # MONAI's default: the models before 0.11
    assert network_norm("batch") == ("batch", {}) and network_norm("none") is None
    with pytest.raises(ValueError, match=r"network_norm must be one of \['instance', 'batch', 'none'\]"):
        network_norm("group")


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_the_2_5d_inferer_hands_each_slice_its_neighbours(spatial_dim):
    """A network returning the input's channels 3-5 (the slices at offset -1) gives back the volume shifted by one
    slice along ``spatial_dim``, its first slice repeated."""
    image = torch.rand(1, 3, 6, 7, 8)
    inferer = NeighbourSliceInferer(spatial_dim, context_slices=1, roi_size=[-1, -1], sw_batch_size=4)

    def previous_slices(x):
        assert x.shape[1] == 9
        return x[:, 3:6]

    pred = inferer(image, previous_slices)
    n = image.shape[2 + spatial_dim]
    expected = image.index_select(2 + spatial_dim, (torch.arange(n) - 1).clamp(min=0))
    torch.testing.assert_close(pred, expected)


def test_masked_inputs_are_the_masked_volume_sliced_and_leave_the_target_as_acquired():
    """``PrepareMapBatch(mask_inputs=True)``: the network's input is the image times the brain mask, the target's image
    is the image; a training slice stack masked by its ``input_mask`` equals the masked volume's stack at that slice
    (what inference feeds the network), each neighbour masked by its own slice of the mask."""
    from pipeline.data.slices import SliceDataset, brain_only, stack_neighbour_slices
    from pipeline.engine import PrepareMapBatch

    rng = np.random.default_rng(0)
    image = torch.as_tensor(rng.random((3, 6, 7, 8)), dtype=torch.float32)
    mask = torch.as_tensor(rng.random((1, 6, 7, 8)) > 0.4, dtype=torch.float32)
    volume_batch = {"image": image[None], "mask": mask[None]}
    network_input, _ = PrepareMapBatch(label_key=None, with_acquired=False, mask_inputs=True)(volume_batch)
    torch.testing.assert_close(network_input, image[None] * mask[None])
    unmasked, _ = PrepareMapBatch(label_key=None, with_acquired=False)(volume_batch)
    assert unmasked is volume_batch["image"]
    axis, index = 1, 3
    item = SliceDataset(
        [{"image": image, "mask": mask, "subject": "s"}], axis, 0.0, context_slices=1, mask_inputs=True
    )[index]
    assert item["input_mask"].shape == (3, 6, 8)
    batch = {key: item[key][None] for key in ("image", "mask", "input_mask")}
    network_input, target = PrepareMapBatch(label_key=None, mask_inputs=True)(batch)
    expected = stack_neighbour_slices(image * mask, axis, 1, index)[None]
    torch.testing.assert_close(network_input, expected)
    assert not torch.equal(network_input, brain_only(batch["image"], batch["mask"]))  # not the centre mask alone
    torch.testing.assert_close(target["image"], batch["image"])  # the physics terms' acquired images
    with pytest.raises(ValueError, match="brain mask"):
        PrepareMapBatch(label_key=None, mask_inputs=True)({"image": image[None]})
    with pytest.raises(ValueError, match="does not fit"):
        brain_only(torch.zeros(1, 9, 4, 4), torch.zeros(1, 2, 4, 4))


def test_with_masked_inputs_nothing_outside_the_brain_reaches_the_maps():
    """A random 2.5D network through the inference path: a head around the brain (anything outside the mask) changes
    the maps without masked inputs and leaves them identical with them."""
    from monai.networks.nets import BasicUNet

    from pipeline.engine import PrepareMapBatch

    torch.manual_seed(0)
    network = BasicUNet(2, 9, 3, features=(4, 4, 8, 8, 16, 4)).eval()
    inferer = NeighbourSliceInferer(spatial_dim=1, context_slices=1, roi_size=(-1, -1), sw_batch_size=4)
    image = torch.rand(1, 3, 32, 6, 32)
    mask = torch.zeros(1, 1, 32, 6, 32)
    mask[..., 8:24, :, 8:24] = 1
    head = image + (1 - mask) * 5.0  # bright tissue outside the brain
    maps = {}
    for masked in (False, True):
        prepare = PrepareMapBatch(label_key=None, with_acquired=False, mask_inputs=masked)
        with torch.no_grad():
            maps[masked] = [inferer(prepare({"image": x, "mask": mask})[0], network) for x in (image, head)]
    inside = mask.expand(1, 3, *mask.shape[2:]) > 0
    assert not torch.allclose(maps[False][0][inside], maps[False][1][inside])
    torch.testing.assert_close(maps[True][0][inside], maps[True][1][inside])
