"""pipeline.engine helpers that the bundle's engines use: writing maps back onto the input's grid, the model card."""

import json
import pathlib

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from pipeline.engine import paste_on_grid, trained_slice_axis, write_model_card

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
    """inference.json's ``slice_axis`` is the one in ``model.json`` beside the checkpoint; an explicit override wins."""
    write_model_card(tmp_path, slice_axis=0)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["checkpoint"] = str(tmp_path / "model.pt")
    assert parser.get_parsed_content("slice_axis") == 0
    parser["slice_axis"] = 2
    assert parser.get_parsed_content("slice_axis") == 2


def test_a_model_without_its_card_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.json is missing.*model\.onnx.*--slice_axis"):
        trained_slice_axis(tmp_path / "model.onnx")


def test_a_resumed_run_keeps_its_slice_axis(tmp_path):
    card = write_model_card(tmp_path, slice_axis=2)
    assert trained_slice_axis(tmp_path / "model.pt") == 2
    assert write_model_card(tmp_path, slice_axis=2, resume="true") == card  # the same slices: resumes
    with pytest.raises(ValueError, match=r"model\.json: the run being resumed was trained on slice_axis 2 \(axial\)"):
        write_model_card(tmp_path, slice_axis=1, resume="true")
    assert json.loads(card.read_text()) == {"slice_axis": 2}  # untouched by the refused resume
    write_model_card(tmp_path, slice_axis=1)  # a new run (--overwrite true) records its own
    assert trained_slice_axis(tmp_path / "model.pt") == 1
