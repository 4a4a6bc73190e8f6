"""N4 receive-bias correction (pipeline.data.bias_field): a known smooth field is recovered, and the volume pipeline
applies it to the weighted images only."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.data import build_volume_dataset
from pipeline.data.bias_field import CorrectBiasFieldd, n4_bias_field
from pipeline.data.errors import InvalidInputError


def _biased_volume(shape=(72, 84, 66), seed=0):
    """Two tissues in a ball times a known smooth field ``exp(0.2 (x + y^2/2 - 0.3 z))`` (±25 %), plus noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = x**2 + y**2 + z**2 < 0.9
    tissue = np.where(np.sin(6 * x) * np.cos(5 * y) > 0, 1.0, 0.6) * mask
    field = np.exp(0.2 * (x + 0.5 * y**2 - 0.3 * z))
    image = np.clip(tissue * field + 0.01 * rng.standard_normal(shape), 0, None) * mask
    return image.astype(np.float32), mask, tissue, field


def _cv(values):
    return float(values.std() / values.mean())


def test_n4_recovers_a_known_field_up_to_a_constant():
    image, mask, tissue, field = _biased_volume()
    estimate = n4_bias_field(image, mask)
    assert estimate.shape == image.shape and (estimate > 0).all()
    # the field varies by ~9 % (CV) inside the ball; its estimate is within 1 % of it up to one constant
    assert _cv(field[mask]) > 0.08
    assert _cv((estimate / field)[mask]) < 0.01
    for level in (1.0, 0.6):  # each tissue is flat again after the correction
        inside = mask & (tissue == level)
        assert _cv(image[inside]) > 0.08
        assert _cv((image / estimate)[inside]) < 0.025


def test_n4_ignores_zero_intensities_inside_the_mask():
    """A FLAIR's nulled CSF may be exactly 0 inside the brain mask: the log fit leaves it out (no NaN)."""
    image, mask, _, field = _biased_volume()
    image[:, :, 30:34] = 0.0
    estimate = n4_bias_field(image, mask)
    assert np.isfinite(estimate).all()
    assert _cv((estimate / field)[mask]) < 0.015


def test_correct_bias_field_transform_divides_every_channel_by_its_own_field():
    image, mask, _, field = _biased_volume()
    flat = image / field  # a second channel without a field: its estimate is flat
    data = {
        "t1w": MetaTensor(torch.as_tensor(np.stack([image, flat]))),
        "mask": MetaTensor(torch.as_tensor(mask[None].astype(np.float32))),
    }
    out = CorrectBiasFieldd("t1w")(data)
    assert isinstance(out["t1w"], MetaTensor) and out["t1w"].shape == (2, *image.shape)
    divided_by = [data["t1w"][c].numpy()[mask] / out["t1w"][c].numpy()[mask] for c in range(2)]  # fields applied
    assert _cv(divided_by[0] / field[mask]) < 0.01
    assert _cv(divided_by[1]) < 0.01  # the flat channel is left (almost) as it was
    assert out["mask"] is data["mask"]


def test_correct_bias_field_rejects_negative_images_and_tiny_masks():
    image, mask, _, _ = _biased_volume()
    negative = image.copy()
    negative[mask] -= 2.0
    to_tensor = lambda array: MetaTensor(torch.as_tensor(array[None].astype(np.float32)))
    with pytest.raises(InvalidInputError, match="t1w.*negative intensities"):
        CorrectBiasFieldd("t1w")({"t1w": to_tensor(negative), "mask": to_tensor(mask), "subject": "sub-x"})
    tiny = np.zeros_like(mask)
    tiny[30:34, 30:34, 30:34] = True
    with pytest.raises(InvalidInputError, match="too few for the bias-field correction"):
        CorrectBiasFieldd("t1w")({"t1w": to_tensor(image), "mask": to_tensor(tiny), "subject": "sub-x"})


def test_volume_pipeline_corrects_the_weighted_images_only(tiny_study):
    plain, corrected = (
        build_volume_dataset(tiny_study, section="validation", cache_num=0, bias_correction=flag)[0]
        for flag in (False, True)
    )
    inside = plain["mask"][0] > 0
    assert torch.equal(plain["mask"], corrected["mask"])
    assert torch.equal(plain["label"], corrected["label"])  # the maps the network learns are untouched
    for channel in range(3):  # each weighted image changed by a smooth factor, and is still normalised
        ratio = (corrected["image"][channel] / plain["image"][channel])[inside]
        assert torch.isfinite(ratio).all() and 0.01 < _cv(ratio.numpy()) < 0.5
        assert torch.quantile(corrected["image"][channel][inside], 0.99).item() == pytest.approx(1.0, abs=0.02)
