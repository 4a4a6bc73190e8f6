"""Tests of pipeline.data.brain_mask (template-based brain extraction) and pipeline.phantom.head (synthetic head).

On a full-size phantom subject, as the phantom images only the brain, and with the synthetic skull, scalp and neck of
:func:`~pipeline.phantom.head.add_synthetic_head` around it: ``BrainMaskd`` must reach Dice >= 0.95 against the
phantom's true mask in both cases, while the foreground threshold falls clearly below once there is a head.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged, Orientationd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pipeline.data import brain_mask
from pipeline.data.brain_mask import BrainMaskd, TemplateFit, load_mni152_templates
from pipeline.data.coregistration import to_sitk
from pipeline.data.errors import InvalidInputError
from pipeline.data.foreground import foreground_mask
from pipeline.phantom.head import LAYER_BOUNDARIES_MM, add_synthetic_head

KEYS = ("t1w", "t2w", "flair", "mask", "t1_ref")
MIN_DICE = 0.95
BRAIN_CENTRE_RAS_MM = np.array([0.0, -18.0, 10.0])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def subject(full_subject) -> dict:
    """The loaded subject (RAS MetaTensors) and its ``phantom.json`` record under ``"phantom"``."""
    entry = {"subject": full_subject["subject"], **{key: full_subject[key] for key in KEYS}}
    data = LoadImaged(KEYS, image_only=True, ensure_channel_first=True, dtype=np.float32)(entry)
    data = Orientationd(KEYS, axcodes="RAS", labels=None)(data)
    data["phantom"] = json.loads((pathlib.Path(entry["t1w"]).parent / "phantom.json").read_text())
    return data


@pytest.fixture(scope="module")
def headed(subject):
    """The subject's weighted images wrapped in the synthetic head (padded grid)."""
    images = {key: subject[key][0].numpy() for key in ("t1w", "t2w", "flair")}
    mask = subject["mask"][0].numpy() > 0
    return add_synthetic_head(
        images, mask, np.asarray(subject["t1w"].affine), subject["phantom"]["noise_sigma"], seed=0
    )


@pytest.fixture(scope="module")
def headed_t1w(subject, headed) -> MetaTensor:
    """The T1w with its head, of a smaller subject (x 0.94) in another pose (nodding 8°): the template must be fitted
    to the brain, not to the head (mutual information alone would stretch it over the scalp here)."""
    pose = np.eye(4)
    pose[:3, :3] = 0.94 * Rotation.from_euler("x", 8.0, degrees=True).as_matrix()
    pose[:3, 3] = BRAIN_CENTRE_RAS_MM - pose[:3, :3] @ BRAIN_CENTRE_RAS_MM
    affine = torch.as_tensor(pose @ headed.affine)
    meta = {**subject["t1w"].meta, "affine": affine, "filename_or_obj": "head/t1w.nii.gz"}
    return MetaTensor(torch.from_numpy(headed.images["t1w"])[None], meta=meta)


@pytest.fixture(scope="module")
def masks(subject, headed_t1w) -> dict:
    """``BrainMaskd`` output without and with the head."""
    transform = BrainMaskd("t1w", mask_key="mask")
    return {
        "brain": transform({"subject": "sub-01", "t1w": subject["t1w"]}),
        "head": transform({"subject": "sub-01", "t1w": headed_t1w}),
    }


def test_brain_mask_matches_the_phantom_without_and_with_head(subject, headed, masks):
    truth = subject["mask"][0].numpy() > 0
    without_head = dice(masks["brain"]["mask"][0].numpy() > 0.5, truth)
    with_head = dice(masks["head"]["mask"][0].numpy() > 0.5, headed.brain_mask)
    assert without_head >= MIN_DICE, without_head
    assert with_head >= MIN_DICE, with_head


def test_foreground_threshold_finds_the_head_not_the_brain(subject, headed, masks):
    """Without a head a threshold is as good (the phantom is brain only); with one it is clearly worse."""
    truth = subject["mask"][0].numpy() > 0
    assert dice(foreground_mask(subject["t1w"][0].numpy()), truth) >= MIN_DICE
    threshold = dice(foreground_mask(headed.images["t1w"]), headed.brain_mask)
    extraction = dice(masks["head"]["mask"][0].numpy() > 0.5, headed.brain_mask)
    assert threshold < 0.85 and threshold < extraction - 0.1, (threshold, extraction)


def test_brain_mask_output_is_a_mask_on_the_t1w_grid(subject, headed_t1w, masks):
    for name, t1w in (("brain", subject["t1w"]), ("head", headed_t1w)):
        mask = masks[name]["mask"]
        assert isinstance(mask, MetaTensor) and mask.dtype == torch.float32
        assert mask.shape == t1w.shape
        np.testing.assert_array_equal(np.asarray(mask.affine), np.asarray(t1w.affine))
        assert set(np.unique(mask.numpy())) == {0.0, 1.0}
        assert mask.meta["filename_or_obj"] == f"brain mask estimated from {t1w.meta['filename_or_obj']}"
        assert masks[name]["t1w"] is t1w


def test_warped_priors_agree_with_the_phantom_tissues(subject):
    """GM / WM / CSF priors on the T1w grid claim mostly the phantom's own GM / WM / CSF (from its 1 mm T1 map)."""
    fit = TemplateFit(to_sitk(subject["t1w"]))
    priors = fit.tissue_probabilities()
    assert set(priors) == {"grey_matter", "white_matter", "csf"}
    truth = subject["mask"][0].numpy() > 0
    t1_ms = subject["t1_ref"][0].numpy()
    tissues = subject["phantom"]["tissues"]

    def rate_midpoint(a: str, b: str) -> float:  # T1 whose rate is halfway between the two tissues'
        return 2.0 / (1.0 / tissues[a]["t1_ms"] + 1.0 / tissues[b]["t1_ms"])

    classes = np.digitize(  # 0 WM, 1 GM (cortical and deep), 2 CSF
        t1_ms, [rate_midpoint("white_matter", "cortical_grey_matter"), rate_midpoint("cortical_grey_matter", "csf")]
    )
    for prior, label, threshold, minimum in (
        ("white_matter", 0, 0.5, 0.75),
        ("grey_matter", 1, 0.5, 0.8),
        ("csf", 2, 0.8, 0.6),
    ):
        claimed = (priors[prior] > threshold) & truth
        share = float(np.mean(classes[claimed] == label))
        chance = float(np.mean(classes[truth] == label))
        assert share >= minimum and share > chance + 0.2, (prior, share, chance)
    medians = {name: np.median(t1_ms[(priors[name] > 0.8) & truth]) for name in priors}
    assert medians["white_matter"] < medians["grey_matter"] < medians["csf"], medians
    np.testing.assert_array_less(-1e-6, priors["csf"])  # probabilities in [0, 1]
    assert max(float(p.max()) for p in priors.values()) <= 1.0 + 1e-6


def test_templates_are_cached_and_consistent():
    templates = load_mni152_templates()
    assert load_mni152_templates() is templates
    assert templates.t1.GetSize() == templates.brain_mask.GetSize() == (197, 233, 189)
    assert templates.t1.GetSpacing() == (1.0, 1.0, 1.0)


def test_brain_mask_rejects_a_bad_input(subject):
    with pytest.raises(InvalidInputError, match=r"sub-01: t1w file .*expected a \(1, X, Y, Z\)"):
        BrainMaskd("t1w")({"subject": "sub-01", "t1w": subject["t1w"][0]})


def test_synthetic_head_layers_and_determinism():
    """On a small ball: brain voxels unchanged, the grid padded, skull dark, scalp bright on T1w, same seed → same."""
    spacing = np.array([1.0, 1.0, 1.5])
    affine = np.diag([*spacing, 1.0])
    grid = np.stack(np.meshgrid(*(np.arange(n) * s for n, s in zip((40, 40, 28), spacing)), indexing="ij"))
    brain = np.linalg.norm(grid - np.array([20.0, 20.0, 21.0])[:, None, None, None], axis=0) < 12.0
    images = {key: np.where(brain, 1000.0, 0.0).astype(np.float32) for key in ("t1w", "t2w", "flair")}
    head = add_synthetic_head(images, brain, affine, noise_sigma=10.0, seed=4)
    again = add_synthetic_head(images, brain, affine, noise_sigma=10.0, seed=4)
    other = add_synthetic_head(images, brain, affine, noise_sigma=10.0, seed=5)
    for key in images:
        np.testing.assert_array_equal(head.images[key], again.images[key])
        assert not np.array_equal(head.images[key], other.images[key])
        np.testing.assert_array_equal(head.images[key][head.brain_mask], 1000.0)
    assert head.brain_mask.sum() == brain.sum()
    before = head.padding[:, 0]
    np.testing.assert_allclose(head.affine[:3, 3], -spacing * before)  # the origin moves with the padding
    # the scalp ends inside the padded grid on every side but the neck's
    reach = np.ceil(LAYER_BOUNDARIES_MM[-1] / spacing).astype(int)
    corners = np.argwhere(head.brain_mask)
    assert np.all(corners.min(0) >= reach) and np.all(corners.max(0) + reach < head.brain_mask.shape)
    # intensity by distance from the brain: skull (3-6 mm) dark, scalp (8-11 mm) bright on T1w
    distance = ndimage.distance_transform_edt(~head.brain_mask, sampling=spacing)
    t1w = head.images["t1w"]
    neck = np.zeros_like(head.brain_mask)
    neck[:, :, : corners[:, 2].min()] = True
    skull = (distance > 3.5) & (distance < 5.5) & ~neck
    scalp = (distance > 8.5) & (distance < 10.5) & ~neck
    assert np.median(t1w[skull]) < 60.0 and np.median(t1w[scalp]) > 1000.0
    assert head.head_mask[head.brain_mask].all() and head.head_mask.sum() > 2 * brain.sum()
    with pytest.raises(ValueError, match="keyed by"):
        add_synthetic_head({"pd": images["t1w"]}, brain, affine, noise_sigma=10.0)


def test_template_fit_is_cached_by_the_t1w_content(subject, tmp_path, monkeypatch):
    """A second fit of the same voxels and geometry reads the transform back instead of registering again (exactly the
    same transform, so the same masks); a changed voxel or another seed is fitted anew."""
    monkeypatch.setenv("QMAP_HYBRID_CACHE", str(tmp_path))
    t1w = to_sitk(subject["t1w"])
    first = TemplateFit(t1w)
    assert len(list((tmp_path / "template_fit").glob("*.json"))) == 1

    def no_registration(*args, **kwargs):
        raise AssertionError("registered again")

    with monkeypatch.context() as patched:
        patched.setattr(brain_mask, "_register", no_registration)
        again = TemplateFit(t1w)
    assert again.transform.GetParameters() == first.transform.GetParameters()
    assert again.transform.GetFixedParameters() == first.transform.GetFixedParameters()
    assert again.metric == first.metric
    np.testing.assert_array_equal(again.brain_mask(), first.brain_mask())

    edited = sitk.Image(t1w)
    edited[10, 10, 10] = edited[10, 10, 10] + 1.0
    calls = []
    real_register = brain_mask._register
    monkeypatch.setattr(brain_mask, "_register", lambda *a, **k: calls.append(1) or real_register(*a, **k))
    TemplateFit(edited)
    TemplateFit(t1w, seed=1)
    assert len(calls) == 4  # two stages for each new key
    assert len(list((tmp_path / "template_fit").glob("*.json"))) == 3
