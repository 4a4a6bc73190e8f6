"""The digital brain phantom: anatomy, tissue values, partial volumes, labels, images, noise, study files."""

import gzip
import json
import pathlib

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from scipy import ndimage
from scipy.optimize import brentq

from pipeline import physics
from pipeline.data import ensure_study
from pipeline.phantom import generate_study, study_manifest
from pipeline.phantom.__main__ import main as phantom_cli
from pipeline.phantom.anatomy import load_template_anatomy
from pipeline.phantom.contrasts import (
    WHITE_MATTER_INTENSITY,
    null_t1_ms,
    protocol_overrides,
    protocols,
    signed_signal,
)
from pipeline.phantom.labels import slab_affine
from pipeline.phantom.simulate import compartment_values, mix_relaxation_rates, mix_signals, simulate_subject
from pipeline.phantom.subject_parameters import SubjectParameters
from pipeline.phantom.study import simulate_study_subject, simulate_tissue_changes, study_grid
from pipeline.phantom.tissues import COMPARTMENTS, TISSUES_3T, scale_array, scales_as_dict, tissue_scales

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("training", "validation", "testing")
PURE = 0.99
"""Fraction above which a voxel counts as one tissue."""


def _load(study, relative):
    """(data float32, image) of a study file."""
    image = nib.load(pathlib.Path(study).parent / relative)
    return image.get_fdata(dtype=np.float32), image


def _entry(study, section):
    return json.loads(pathlib.Path(study).read_text())[section][0]


@pytest.fixture(scope="module")
def anatomy():
    return load_template_anatomy()


@pytest.fixture(scope="module")
def subject(anatomy):
    """(parameters, volumes) of the first subject of the tiny study, simulated in memory (with fractions)."""
    parameters = SubjectParameters.draw(7, 0, anatomy)
    return parameters, simulate_subject(anatomy, study_grid(anatomy, sagittal_slices=12), parameters, snr=30.0)


def _pure(volumes, name):
    return volumes.fractions[COMPARTMENTS.index(name)] > PURE


# ---------------------------------------------------------------------------------------------- anatomy


def test_fractions_sum_to_one_inside_the_mask_only(anatomy, subject):
    for fractions, mask in ((anatomy.fractions, anatomy.mask), (subject[1].fractions, subject[1].mask)):
        total = fractions.sum(0)
        np.testing.assert_allclose(total[mask], 1.0, atol=1e-5)
        assert np.all(total[~mask] == 0) and np.all(fractions >= 0)


def test_csf_fills_ventricles_and_sulci_but_not_the_fissure(anatomy):
    csf = anatomy.fractions[COMPARTMENTS.index("csf")]

    def at(x, y, z):
        return tuple(round(anatomy.grid.world_to_index(d, mm)) for d, mm in enumerate((x, y, z)))

    assert csf[at(20, -35, 15)] > 0.8 and csf[at(-20, -35, 15)] > 0.8  # atria of the lateral ventricles
    assert 0.02 < csf[anatomy.mask].mean() < 0.2
    # the midsagittal plane above the corpus callosum is mostly outside the brain (interhemispheric fissure)
    above = np.s_[:, at(0, 0, 30)[2] :]
    midline, lateral = (anatomy.mask[at(x, 0, 0)[0]][above] for x in (0, 20))
    assert midline.sum() < 0.6 * lateral.sum()
    # no CSF shell around the brain: only the outermost (partial-volume) voxel layer is mostly CSF
    inner = ndimage.binary_erosion(anatomy.mask)
    second_layer = inner & ~ndimage.binary_erosion(inner)
    assert np.mean(csf[second_layer] > 0.5) < 0.25


# ------------------------------------------------------------------------------------ tissues and maps


@pytest.mark.parametrize(
    "tissue, reference",
    [("white_matter", "white_matter"), ("cortical_grey_matter", "cortical_grey_matter"), ("csf", "csf")],
)
def test_pure_tissue_values_match_literature(subject, physics_reference, tissue, reference):
    _, volumes = subject
    expected = physics_reference["tissues_3T"][reference]
    pure = _pure(volumes, tissue)
    assert pure.sum() > 20
    for volume, key in ((volumes.t1_ms, "T1"), (volumes.t2_ms, "T2"), (volumes.m0, "PD")):
        assert np.median(volume[pure]) == pytest.approx(expected[key], rel=0.1)


def test_maps_are_zero_outside_the_brain(subject):
    _, volumes = subject
    for volume in (volumes.t1_ms, volumes.t2_ms, volumes.m0):
        assert np.all(volume[~volumes.mask] == 0) and np.all(volume[volumes.mask] > 0)


def test_partial_volumes_mix_relaxation_rates():
    t1_white, t1_grey = 832.0, 1331.0
    fractions = np.zeros((len(COMPARTMENTS), 1), np.float32)
    fractions[:2] = 0.5
    values = np.ones((len(COMPARTMENTS), 3, 1), np.float32)
    values[0, :, 0], values[1, :, 0] = (t1_white, 80.0, 0.7), (t1_grey, 110.0, 0.8)
    t1_ms, t2_ms, m0 = mix_relaxation_rates(fractions, values)
    assert t1_ms[0] == pytest.approx(1.0 / (0.5 / t1_white + 0.5 / t1_grey))
    assert t2_ms[0] == pytest.approx(1.0 / (0.5 / 80.0 + 0.5 / 110.0))
    assert m0[0] == pytest.approx(0.75)


def test_simulated_white_grey_boundary_follows_rate_mixing(subject):
    parameters, volumes = subject
    white, grey = volumes.fractions[0], volumes.fractions[COMPARTMENTS.index("cortical_grey_matter")]
    half = (np.abs(white - 0.5) < 0.05) & (np.abs(grey - 0.5) < 0.05)
    assert half.sum() > 50
    t1_white, t1_grey = parameters.tissue_values()[:2, 0]
    rate_mix = 1.0 / (white[half] / t1_white + grey[half] / t1_grey)
    time_mix = white[half] * t1_white + grey[half] * t1_grey
    ratio = np.median(volumes.t1_ms[half] / rate_mix)
    assert ratio == pytest.approx(1.0, abs=0.02)
    assert abs(ratio - 1.0) < abs(np.median(volumes.t1_ms[half] / time_mix) - 1.0)


def test_lesions_are_long_t1_t2_and_bright_on_flair(anatomy):
    parameters = SubjectParameters.draw(7, 1, anatomy)
    lesion = max(parameters.lesions, key=lambda item: item.semi_axes_mm.min())
    assert all(1.0 <= 2 * item.semi_axes_mm.mean() <= 8.0 * 1.2 for item in parameters.lesions)
    full = study_grid(anatomy)
    start = [round(full.world_to_index(d, lesion.centre_mm[d])) - 12 for d in range(3)]
    volumes = simulate_subject(anatomy, full.subgrid(start, (24, 24, 24)), parameters, snr=30.0)
    share = volumes.fractions[COMPARTMENTS.index("lesion")]
    core = share > 0.9
    assert core.sum() >= 1
    lesion_values = parameters.tissue_values()[COMPARTMENTS.index("lesion")]
    np.testing.assert_allclose(np.median(volumes.t2_ms[core]), lesion_values[1], rtol=0.15)
    assert np.median(volumes.t1_ms[core]) > 1.4 * TISSUES_3T["white_matter"].t1_ms
    white = _pure(volumes, "white_matter")
    assert np.median(volumes.weighted["flair"][core]) > 3 * np.median(volumes.weighted["flair"][white])


# ------------------------------------------------------------------------------------- weighted images


def test_weighted_image_contrast_order(subject):
    _, volumes = subject
    means = {
        name: {contrast: float(np.mean(image[_pure(volumes, name)])) for contrast, image in volumes.weighted.items()}
        for name in ("white_matter", "cortical_grey_matter", "csf")
    }
    wm, gm, csf = means["white_matter"], means["cortical_grey_matter"], means["csf"]
    assert wm["mprage"] > gm["mprage"] > csf["mprage"]
    assert csf["tse"] > gm["tse"] > wm["tse"]
    assert gm["flair"] > wm["flair"] > csf["flair"]  # CSF nulled


def test_flair_nulls_nominal_csf():
    csf, white = TISSUES_3T["csf"], TISSUES_3T["white_matter"]
    assert abs(signed_signal("flair", np.float32(csf.t1_ms), np.float32(csf.t2_ms), np.float32(csf.pd))) < 1.0
    assert signed_signal("flair", np.float32(white.t1_ms), np.float32(white.t2_ms), np.float32(white.pd)) == (
        pytest.approx(WHITE_MATTER_INTENSITY, rel=1e-4)
    )


def test_inverted_compartments_cancel_in_partial_volumes():
    csf = TISSUES_3T["csf"]

    def flair(t1_ms):
        return float(signed_signal("flair", np.float32(t1_ms), np.float32(csf.t2_ms), np.float32(csf.pd)))

    # a fluid with T1 beyond the nulled one is still inverted at the excitation: negative signal
    assert flair(1.1 * csf.t1_ms) < 0 < flair(0.9 * csf.t1_ms)
    fractions = np.array([[0.5], [0.0], [0.0], [0.5], [0.0]], np.float32)
    values = np.array([[[832.0], [79.2], [0.69]]] * 5, np.float32)
    values[3, :, 0] = (1.1 * csf.t1_ms, csf.t2_ms, csf.pd)
    mixed = mix_signals(fractions, values)["flair"][0]
    assert mixed == pytest.approx(abs(0.5 * WHITE_MATTER_INTENSITY + 0.5 * flair(1.1 * csf.t1_ms)), rel=1e-3)


def test_noise_level_matches_requested_snr(subject):
    _, volumes = subject
    snr = 30.0
    background = volumes.fractions.sum(0) == 0
    for contrast, image in volumes.weighted.items():
        # Rician noise of a zero signal is Rayleigh: E[M^2] = 2 sigma^2
        sigma = np.sqrt(np.mean(image[background].astype(np.float64) ** 2) / 2)
        assert sigma == pytest.approx(WHITE_MATTER_INTENSITY / snr, rel=0.03), contrast
    measured_snr = np.mean(volumes.weighted["mprage"][_pure(volumes, "white_matter")]) / volumes.noise_sigma
    assert measured_snr == pytest.approx(snr, rel=0.2)  # within the receive-bias variation


def test_receive_bias_varies_smoothly_by_a_few_to_twenty_percent(anatomy):
    parameters = SubjectParameters.draw(0, 0, anatomy)
    volumes = simulate_subject(anatomy, study_grid(anatomy, sagittal_slices=1), parameters, snr=1e6)
    white = _pure(volumes, "white_matter")
    flat = volumes.weighted["mprage"][white]
    spread = np.percentile(flat, 95) / np.percentile(flat, 5)
    assert 1.03 < spread < 1.5


def test_sagittal_crop_equals_planes_of_the_larger_grid(anatomy):
    parameters = SubjectParameters.draw(7, 2, anatomy)
    small, large = study_grid(anatomy, sagittal_slices=4), study_grid(anatomy, sagittal_slices=10)
    offset = round(large.world_to_index(0, small.axes_mm()[0][0]))
    cropped = simulate_subject(anatomy, small, parameters, snr=30.0)
    full = simulate_subject(anatomy, large, parameters, snr=30.0)
    planes = slice(offset, offset + 4)
    np.testing.assert_array_equal(cropped.mask, full.mask[planes])
    for name in ("t1_ms", "t2_ms", "m0"):
        np.testing.assert_allclose(getattr(cropped, name), getattr(full, name)[planes], rtol=1e-5)
    for contrast, image in cropped.weighted.items():
        np.testing.assert_allclose(image, full.weighted[contrast][planes], rtol=1e-4, atol=1e-2)


# ------------------------------------------------------------------------------------------ labels


def test_label_geometry(tiny_study):
    entry = _entry(tiny_study, "validation")
    t1w, t1w_image = _load(tiny_study, entry["t1w"])
    for key in ("t1_map", "t2_map", "m0_map"):
        label, label_image = _load(tiny_study, entry[key])
        assert label_image.header.get_zooms() == pytest.approx((1.0, 1.0, 3.5))
        assert label.shape == (t1w.shape[0], t1w.shape[1], int(np.ceil(t1w.shape[2] / 3.5)))
        # slab j covers [3.5 j, 3.5 (j + 1)) mm from the grid's first voxel edge (index -0.5): centre 3.5 j + 1.25
        for j in (0, 7, label.shape[2] - 1):
            centre = label_image.affine @ [2, 5, j, 1]
            assert centre == pytest.approx(t1w_image.affine @ [2, 5, 3.5 * j + 1.25, 1])
    np.testing.assert_allclose(slab_affine(np.eye(4), 0, 2.0)[0], [2.0, 0, 0, 0.5])


def _slab_mean(volume, thickness=3.5):
    """Independent box average along z: each 1 mm voxel split into two 0.5 mm halves, 7 halves per slab."""
    halves = np.repeat(volume.astype(np.float64), 2, axis=2)
    per_slab = int(thickness * 2)
    assert halves.shape[2] % per_slab == 0
    return halves.reshape(*halves.shape[:2], -1, per_slab).mean(axis=3)


def test_labels_are_slab_averages_of_the_truth(tiny_study):
    entry = _entry(tiny_study, "testing")
    t1, t2, m0 = (_load(tiny_study, entry[key])[0] for key in ("t1_ref", "t2_ref", "m0_ref"))
    labels = {key: _load(tiny_study, entry[key])[0] for key in ("t1_map", "t2_map", "m0_map")}
    m0_mean = _slab_mean(m0)
    np.testing.assert_allclose(labels["m0_map"], m0_mean, atol=1e-6)
    brain = m0_mean > 0
    for key, truth in (("t1_map", t1), ("t2_map", t2)):
        rate = _slab_mean(np.divide(m0, truth, out=np.zeros_like(m0), where=truth > 0))
        expected = np.divide(m0_mean, rate, out=np.zeros_like(m0_mean), where=brain)
        np.testing.assert_allclose(labels[key], expected, rtol=1e-5, atol=1e-3)
        assert np.all(labels[key][~brain] == 0)


def test_labels_blur_edges_and_keep_smooth_regions(tiny_study):
    entry = _entry(tiny_study, "testing")
    truth = _load(tiny_study, entry["t1_ref"])[0]
    label = _load(tiny_study, entry["t1_map"])[0]
    slab_of_voxel = np.minimum((np.arange(truth.shape[2]) + 0.5) // 3.5, label.shape[2] - 1).astype(int)
    upsampled = label[:, :, slab_of_voxel]
    relative = np.abs(upsampled - truth) / np.maximum(truth, 1.0)
    # largest relative change of the truth within 2 mm along z (inside a slab's reach)
    neighbours = [np.abs(np.roll(truth, shift, axis=2) - truth) for shift in (-2, -1, 1, 2)]
    spread = np.maximum.reduce(neighbours) / np.maximum(truth, 1.0)
    brain = truth > 0
    smooth = brain & (spread < 0.01)
    edges = brain & (spread > 0.5)
    assert smooth.sum() > 100 and edges.sum() > 100
    assert np.median(relative[smooth]) < 0.01
    assert np.median(relative[edges]) > max(0.05, 20 * np.median(relative[smooth]))
    assert np.percentile(relative[edges], 90) > 0.2


# ------------------------------------------------------------------------------------------- study files


def test_manifest_round_trips_through_monai(tiny_study):
    manifest = json.loads(tiny_study.read_text())
    assert manifest["map_units"] == {"t1_map": "ms", "t2_map": "ms", "m0_map": "a.u."}
    keys = {"subject", "t1w", "t2w", "flair", "t1_map", "t2_map", "m0_map", "mask", "t1_ref", "t2_ref", "m0_ref"}
    for section, expected_subjects in zip(SECTIONS, (["sub-01"], ["sub-02"], ["sub-03"])):
        entries = load_decathlon_datalist(tiny_study, is_segmentation=False, data_list_key=section)
        assert [entry["subject"] for entry in manifest[section]] == expected_subjects
        for entry, raw in zip(entries, manifest[section]):
            assert set(entry) == keys
            for key in keys - {"subject"}:
                assert not pathlib.Path(raw[key]).is_absolute()
                assert pathlib.Path(entry[key]).is_file(), entry[key]


def test_files_have_scanner_like_types_and_a_shared_grid(tiny_study):
    entry = _entry(tiny_study, "testing")
    reference = nib.load(tiny_study.parent / entry["t1w"])
    for key, dtype in (
        ("t1w", np.int16),
        ("t2w", np.int16),
        ("flair", np.int16),
        ("mask", np.uint8),
        ("t1_ref", np.float32),
        ("m0_ref", np.float32),
        ("t2_map", np.float32),
    ):
        image = nib.load(tiny_study.parent / entry[key])
        assert image.get_data_dtype() == dtype, key
        assert image.shape[:2] == reference.shape[:2] == (16, reference.shape[1])
        if not key.endswith("_map"):
            np.testing.assert_allclose(image.affine, reference.affine)
    # the kept planes are centred ~25 mm right of the midline
    assert np.mean([reference.affine @ [i, 0, 0, 1] for i in range(16)], axis=0)[0] == pytest.approx(25.0, abs=1.0)


def test_top_level_manifest_is_the_default_study():
    committed = json.loads((REPO / "data_manifest.json").read_text())
    assert committed.pop("dataset_dir") == "data/phantom"  # where its files are, for a run without --dataset_dir
    assert committed == study_manifest()
    assert [len(committed[section]) for section in SECTIONS] == [3, 1, 1]
    generator = dict(committed["generator"])
    assert generator.pop("module") == "pipeline.phantom"
    assert study_manifest(**generator) == committed  # the record regenerates the same study


@pytest.mark.parametrize("n_subjects, sizes", [(1, [0, 0, 1]), (2, [1, 0, 1]), (3, [1, 1, 1]), (6, [4, 1, 1])])
def test_split_last_subject_tests_the_one_before_validates(n_subjects, sizes):
    manifest = study_manifest(n_subjects)
    assert [len(manifest[section]) for section in SECTIONS] == sizes
    assert manifest["testing"][0]["subject"] == f"sub-{n_subjects:02d}"


def test_subjects_differ_and_generation_is_byte_reproducible(tiny_study, tmp_path):
    masks = [_load(tiny_study, _entry(tiny_study, section)["mask"])[0] > 0 for section in SECTIONS]
    for first, second in ((0, 1), (1, 2)):
        dice = 2 * np.sum(masks[first] & masks[second]) / (masks[first].sum() + masks[second].sum())
        assert 0.8 < dice < 0.99
    again = generate_study(tmp_path / "again", n_subjects=3, seed=7, sagittal_slices=16)
    originals = sorted(path.relative_to(tiny_study.parent) for path in tiny_study.parent.rglob("*") if path.is_file())
    assert originals == sorted(path.relative_to(again.parent) for path in again.parent.rglob("*") if path.is_file())
    for relative in originals:
        content = (tiny_study.parent / relative).read_bytes()
        assert content == (again.parent / relative).read_bytes(), relative
        if relative.suffix == ".gz":
            assert content[4:8] == b"\0\0\0\0"  # gzip header mtime = 0
            assert gzip.decompress(content)[:4] == (348).to_bytes(4, "little")  # NIfTI-1 header


def test_refuses_to_overwrite_a_different_study(tmp_path):
    first = generate_study(tmp_path, n_subjects=2, seed=1, sagittal_slices=2)
    assert generate_study(tmp_path, n_subjects=2, seed=1, sagittal_slices=2) == first  # same parameters: fine
    with pytest.raises(FileExistsError, match="different study"):
        generate_study(tmp_path, n_subjects=1, seed=1, sagittal_slices=2)
    generate_study(tmp_path, n_subjects=1, seed=1, sagittal_slices=2, overwrite=True)
    assert json.loads(first.read_text())["generator"]["n_subjects"] == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dataset.json", "sub-01"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset.json").write_text('{"training": [{"t1w": "precious.nii.gz"}]}')
    with pytest.raises(FileExistsError, match="not a pipeline.phantom study"):
        generate_study(foreign, n_subjects=1, sagittal_slices=2, overwrite=True)


def test_cli_writes_study_and_figure(tmp_path):
    png = tmp_path / "figure.png"
    phantom_cli(["--out", str(tmp_path / "study"), "--subjects", "1", "--sagittal-slices", "3", "--figure", str(png)])
    assert (tmp_path / "study" / "dataset.json").is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


# ------------------------------------------------------------------------------------------ protocol overrides

SITE_PROTOCOLS = {"tse": {"te": 120.0}, "flair": {"ti": 2000.0}}
"""A new site's protocols: one override per contrast, tested one at a time."""


@pytest.fixture(scope="module")
def default_protocols():
    """The phantom's default protocols from pipeline.physics alone: the paper's, FLAIR's TI nulling nominal CSF."""
    csf = TISSUES_3T["csf"]
    flair = physics.FLAIRProtocol()
    latest_ti = flair.tr - flair.echo_train_length * flair.echo_spacing
    csf_null_ti = brentq(lambda ti: physics.inversion_recovery(csf.t1_ms, physics.FLAIRProtocol(ti=ti)), 1.0, latest_ti)
    return {
        "mprage": physics.MPRAGEProtocol(),
        "tse": physics.TSEProtocol(),
        "flair": physics.FLAIRProtocol(ti=csf_null_ti),
    }


@pytest.fixture(scope="module")
def noiseless(anatomy):
    """(parameters, {name: volumes}) of one subject without noise and receive bias: the default protocols
    ("default") and each contrast of :data:`SITE_PROTOCOLS` overridden alone (its contrast's name)."""
    parameters = SubjectParameters.draw(7, 0, anatomy)
    grid = study_grid(anatomy, sagittal_slices=12)
    variants = {"default": None, **{contrast: {contrast: fields} for contrast, fields in SITE_PROTOCOLS.items()}}
    return parameters, {
        name: simulate_subject(anatomy, grid, parameters, snr=np.inf, receive_bias=False, protocols=overrides)
        for name, overrides in variants.items()
    }


def _ideal_images(parameters, volumes, protocol_of, default_protocols):
    """Independent ideal images at the mask voxels: ``|sum_k f_k sign_k S_k|`` through pipeline.physics.

    ``S_k`` is each compartment's simplified-model signal under ``protocol_of``, ``sign_k`` the sign of its Mz at the
    k-space centre (MPRAGE: the readout's centre excitation; FLAIR: the inversion recovery at TI), and the scale puts
    nominal white matter at 1000 under ``default_protocols``.
    """
    t1, t2, pd = compartment_values(parameters, volumes.grid, volumes.mask).astype(np.float64).transpose(1, 0, 2)
    mprage = protocol_of["mprage"]
    t1_grid = np.geomspace(1.0, 30000.0, 4096)
    centre = physics.mprage_readout(t1_grid, 1.0, mprage)[:, mprage.centre_index]
    signs = {
        "mprage": np.sign(np.interp(np.log(t1), np.log(t1_grid), centre)),
        "tse": 1.0,
        "flair": np.sign(physics.inversion_recovery(t1, protocol_of["flair"])),
    }
    white = TISSUES_3T["white_matter"]
    fractions = volumes.fractions[:, volumes.mask]
    images = {}
    for contrast, protocol in protocol_of.items():
        nominal = physics.synthesize(contrast, white.t1_ms, white.t2_ms, white.pd, default_protocols[contrast])
        signal = np.sum(fractions * signs[contrast] * physics.synthesize(contrast, t1, t2, pd, protocol), axis=0)
        images[contrast] = WHITE_MATTER_INTENSITY / nominal * np.abs(signal)
    return images


def _assert_images_match(volumes, expected):
    for contrast, image in expected.items():
        np.testing.assert_allclose(
            volumes.weighted[contrast][volumes.mask], image, rtol=1e-4, atol=0.05, err_msg=contrast
        )


def test_default_protocols_are_recorded_as_before_and_image_as_before(noiseless, default_protocols):
    assert "protocols" not in study_manifest()["generator"]
    for none in (None, {}, {"tse": {}}, ()):
        assert study_manifest(protocols=none) == study_manifest()
        assert protocol_overrides(none) == ()
    assert protocols()["mprage"] == default_protocols["mprage"] and protocols()["tse"] == default_protocols["tse"]
    assert protocols()["flair"] == physics.FLAIRProtocol(ti=protocols()["flair"].ti)
    assert protocols()["flair"].ti == pytest.approx(default_protocols["flair"].ti, rel=1e-6)
    parameters, volumes = noiseless
    _assert_images_match(
        volumes["default"], _ideal_images(parameters, volumes["default"], default_protocols, default_protocols)
    )


def test_protocol_overrides_are_normalised_and_hashable():
    overrides = protocol_overrides({"flair": {"ti": "2000"}, "tse": {"echo_train_length": 18.0, "te": 120}})
    assert overrides == (("tse", (("te", 120.0), ("echo_train_length", 18))), ("flair", (("ti", 2000.0),)))
    assert isinstance(overrides[0][1][1][1], int) and hash(overrides) == hash(protocol_overrides(overrides))
    tse = protocols(overrides)["tse"]
    assert (tse.te, tse.echo_train_length, tse.tr) == (120.0, 18, physics.TSEProtocol().tr)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"t2w": {"te": 120.0}}, "unknown contrast"),
        ({"tse": {"tee": 120.0}}, "unknown tse field"),
        ({"tse": {"te": "long"}}, "must be a number"),
        ({"tse": {"echo_train_length": 16.5}}, "must be a whole number"),
        ({"tse": {"te": 500.0}}, "te must be in"),
        ({"flair": {"ti": 4500.0}}, "does not fit in tr - ti"),
    ],
)
def test_invalid_protocol_overrides_are_refused_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        generate_study(tmp_path / "study", n_subjects=1, sagittal_slices=2, protocols=overrides)
    assert not (tmp_path / "study").exists()


def test_longer_tse_echo_time_darkens_t2w_by_the_closed_form_only(noiseless, default_protocols):
    parameters, volumes = noiseless
    default, site = volumes["default"], volumes["tse"]
    for contrast in ("mprage", "flair"):
        np.testing.assert_array_equal(site.weighted[contrast], default.weighted[contrast])
    longer = default_protocols | {"tse": physics.TSEProtocol(te=120.0)}
    _assert_images_match(site, _ideal_images(parameters, site, longer, default_protocols))
    for name in ("white_matter", "cortical_grey_matter", "csf", "lesion"):
        pure = default.fractions[COMPARTMENTS.index(name)] == 1.0  # the voxel's T2 is the compartment's
        assert pure.sum() >= 10, name
        ratio = site.weighted["tse"][pure] / default.weighted["tse"][pure]
        np.testing.assert_allclose(ratio, np.exp(-(120.0 - 93.0) / default.t2_ms[pure]), rtol=1e-5, err_msg=name)


def test_flair_inversion_time_override_changes_flair_only_and_its_null(noiseless, default_protocols):
    parameters, volumes = noiseless
    default, site = volumes["default"], volumes["flair"]
    for contrast in ("mprage", "tse"):
        np.testing.assert_array_equal(site.weighted[contrast], default.weighted[contrast])
    later = default_protocols | {"flair": physics.FLAIRProtocol(ti=2000.0)}
    _assert_images_match(site, _ideal_images(parameters, site, later, default_protocols))
    csf = _pure(default, "csf")
    assert np.median(site.weighted["flair"][csf]) > 5 * np.median(default.weighted["flair"][csf])  # CSF not nulled


def test_flair_sign_follows_the_null_of_the_overridden_inversion_time():
    csf = TISSUES_3T["csf"]
    overrides = protocol_overrides({"flair": {"ti": 1700.0}})
    null = null_t1_ms("flair", overrides)
    assert physics.inversion_recovery(null, protocols(overrides)["flair"]) == pytest.approx(0.0, abs=1e-7)
    assert null > 1.2 * null_t1_ms("flair") and null_t1_ms("flair") == pytest.approx(csf.t1_ms, rel=1e-3)

    def flair(t1_ms):
        return float(signed_signal("flair", np.float32(t1_ms), np.float32(csf.t2_ms), np.float32(csf.pd), overrides))

    assert flair(0.95 * null) > 0 > flair(1.05 * null)
    assert flair(csf.t1_ms) > 20.0  # nominal CSF is no longer nulled


def test_cli_records_protocol_overrides_and_the_record_regenerates_the_study(tmp_path):
    site = tmp_path / "site"
    arguments = ["--subjects", "1", "--sagittal-slices", "2"]
    overrides = ["--protocol", "tse.te=120", "--protocol", "flair.ti=2000", "--protocol", "tse.echo_train_length=18"]
    phantom_cli(["--out", str(site), *arguments, *overrides])
    manifest = json.loads((site / "dataset.json").read_text())
    expected = {"tse": {"te": 120.0, "echo_train_length": 18}, "flair": {"ti": 2000.0}}
    assert manifest["generator"]["protocols"] == expected
    generator = dict(manifest["generator"])
    generator.pop("module")
    assert study_manifest(**generator) == manifest
    record = json.loads((site / "sub-01" / "phantom.json").read_text())["protocols"]
    assert record["tse"] == {**physics.TSEProtocol().to_dict(), **expected["tse"]}
    assert record["flair"] == {**protocols()["flair"].to_dict(), "ti": 2000.0}
    assert record["mprage"] == physics.MPRAGEProtocol().to_dict()
    files = {name: (site / "sub-01" / f"{name}.nii.gz").read_bytes() for name in ("t1w", "t2w", "flair")}
    (site / "sub-01" / "t2w.nii.gz").unlink()
    ensure_study(site / "dataset.json")  # regenerates from the generator record
    assert (site / "sub-01" / "t2w.nii.gz").read_bytes() == files["t2w"]
    phantom_cli(["--out", str(tmp_path / "default"), *arguments])
    default = {name: (tmp_path / "default" / "sub-01" / f"{name}.nii.gz").read_bytes() for name in files}
    assert default["t1w"] == files["t1w"] and default["t2w"] != files["t2w"] and default["flair"] != files["flair"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--protocol", "tse.te"], "expected NAME.FIELD=VALUE"),
        (["--protocol", "te=120"], "expected NAME.FIELD=VALUE"),
        (["--protocol", "t2w.te=120"], "unknown contrast"),
        (["--protocol", "tse.tee=120"], "unknown tse field"),
        (["--protocol", "tse.te=500"], "te must be in"),
        (["--acquisition", "realistic", "--protocol", "tse.te=120"], "whole number of echo spacings"),
    ],
)
def test_cli_refuses_bad_protocol_overrides(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        phantom_cli(["--out", str(tmp_path / "study"), "--subjects", "1", "--sagittal-slices", "2", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


WHITE_MATTER_T2_LONGER = {"white_matter": {"t2_ms": 1.2}}
"""A tissue change for the tissue-scale tests: white matter's T2 20 % longer."""


def test_tissue_scales_are_normalised_and_refuse_what_is_not_a_tissue_factor():
    scales = tissue_scales({"lesion": {"t1_ms": "1.5"}, "white_matter": {"pd": 1.0, "t2_ms": 1.2}})
    assert scales == (("white_matter", (("t2_ms", 1.2),)), ("lesion", (("t1_ms", 1.5),)))
    assert tissue_scales(scales) == scales and hash(scales)
    assert scales_as_dict(scales) == {"white_matter": {"t2_ms": 1.2}, "lesion": {"t1_ms": 1.5}}
    expected = np.ones((len(COMPARTMENTS), 3))
    expected[COMPARTMENTS.index("white_matter"), 1] = 1.2
    expected[COMPARTMENTS.index("lesion"), 0] = 1.5
    np.testing.assert_array_equal(scale_array(scales), expected)
    assert tissue_scales(None) == tissue_scales({"csf": {"t1_ms": 1}}) == ()
    for bad, message in [
        ({"wm": {"t2_ms": 1.2}}, "unknown compartment"),
        ({"white_matter": {"t2": 1.2}}, "unknown white_matter parameter"),
        ({"white_matter": {"t2_ms": 0}}, "finite number > 0"),
        ({"white_matter": {"t2_ms": "long"}}, "finite number > 0"),
        ({"white_matter": {"t2_ms": float("nan")}}, "finite number > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            tissue_scales(bad)


def test_a_scaled_tissue_is_the_same_subject_with_that_tissue_changed(anatomy, noiseless, default_protocols):
    """White matter's T2 x 1.2: the same draws, fractions and other maps; the T2 map of pure white matter x 1.2
    exactly; the images those of the scaled values through pipeline.physics (an independent synthesis)."""
    parameters, volumes = noiseless
    scaled_parameters = SubjectParameters.draw(7, 0, anatomy, scales=tissue_scales(WHITE_MATTER_T2_LONGER))
    grid = study_grid(anatomy, sagittal_slices=12)
    scaled = simulate_subject(anatomy, grid, scaled_parameters, snr=np.inf, receive_bias=False)
    white = COMPARTMENTS.index("white_matter")
    expected_values = parameters.tissue_values().copy()
    expected_values[white, 1] *= 1.2
    np.testing.assert_allclose(scaled_parameters.tissue_values(), expected_values, rtol=1e-12)
    default = volumes["default"]
    np.testing.assert_array_equal(scaled.mask, default.mask)
    np.testing.assert_array_equal(scaled.fractions, default.fractions)
    np.testing.assert_array_equal(scaled.t1_ms, default.t1_ms)
    np.testing.assert_array_equal(scaled.m0, default.m0)
    pure_white = default.fractions[white] > 0.999
    assert pure_white.sum() > 1000
    # rates mix with <= 0.1 % of other compartments in these voxels
    np.testing.assert_allclose(scaled.t2_ms[pure_white], 1.2 * default.t2_ms[pure_white], rtol=1e-3)
    tse_change = scaled.weighted["tse"][pure_white] / default.weighted["tse"][pure_white]
    assert np.median(tse_change) == pytest.approx(np.exp(93.0 / 79.2 * (1 - 1 / 1.2)), rel=0.03)  # exp(-TE/T2)
    _assert_images_match(scaled, _ideal_images(scaled_parameters, scaled, default_protocols, default_protocols))


def test_cli_records_tissue_scales_and_the_record_regenerates_the_study(tmp_path):
    arguments = ["--subjects", "1", "--sagittal-slices", "2"]
    phantom_cli(["--out", str(tmp_path / "default"), *arguments])
    scaled_dir = tmp_path / "scaled"
    phantom_cli(["--out", str(scaled_dir), *arguments, "--tissue-scale", "white_matter.t2_ms=1.2"])
    manifest = json.loads((scaled_dir / "dataset.json").read_text())
    assert manifest["generator"]["tissue_scales"] == WHITE_MATTER_T2_LONGER
    assert "tissue_scales" not in json.loads((tmp_path / "default" / "dataset.json").read_text())["generator"]
    generator = dict(manifest["generator"])
    generator.pop("module")
    assert study_manifest(**generator) == manifest
    tissues = {
        name: json.loads((tmp_path / name / "sub-01" / "phantom.json").read_text())["tissues"]
        for name in ("default", "scaled")
    }
    assert tissues["scaled"]["white_matter"]["t2_ms"] == pytest.approx(
        1.2 * tissues["default"]["white_matter"]["t2_ms"]
    )
    assert tissues["scaled"]["cortical_grey_matter"] == tissues["default"]["cortical_grey_matter"]
    files = {
        name: {
            stem: (tmp_path / name / "sub-01" / f"{stem}.nii.gz").read_bytes() for stem in ("t1_map", "t2_map", "mask")
        }
        for name in ("default", "scaled")
    }
    assert (
        files["scaled"]["t1_map"] == files["default"]["t1_map"] and files["scaled"]["mask"] == files["default"]["mask"]
    )
    assert files["scaled"]["t2_map"] != files["default"]["t2_map"]
    (scaled_dir / "sub-01" / "t2_map.nii.gz").unlink()
    ensure_study(scaled_dir / "dataset.json")  # regenerates from the generator record
    assert (scaled_dir / "sub-01" / "t2_map.nii.gz").read_bytes() == files["scaled"]["t2_map"]
    with pytest.raises(SystemExit):
        phantom_cli(["--out", str(tmp_path / "bad"), *arguments, "--tissue-scale", "wm.t2_ms=1.2"])
    assert not (tmp_path / "bad").exists()


def test_tissue_changes_of_one_subject_equal_studies_simulated_with_those_scales():
    generator = dict(study_manifest(2, seed=3, sagittal_slices=4)["generator"])
    changes = list(simulate_tissue_changes(generator, 1, [None, WHITE_MATTER_T2_LONGER]))
    for (volumes, parameters), scales in zip(changes, [None, WHITE_MATTER_T2_LONGER]):
        expected, expected_parameters = simulate_study_subject({**generator, "tissue_scales": scales}, 1)
        np.testing.assert_array_equal(parameters.tissue_values(), expected_parameters.tissue_values())
        for name in ("t1_ms", "t2_ms", "m0", "mask"):
            np.testing.assert_array_equal(getattr(volumes, name), getattr(expected, name))
        for contrast, image in expected.weighted.items():
            np.testing.assert_array_equal(volumes.weighted[contrast], image)
    assert not np.array_equal(changes[0][0].t2_ms, changes[1][0].t2_ms)
