"""The phantom's realistic acquisition: each effect against an independent computation, switches, determinism."""

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline import physics
from pipeline.phantom import generate_study
from pipeline.phantom.__main__ import main as phantom_cli
from pipeline.phantom.acquisition import (
    TRANSMIT_RANGE,
    Acquisition,
    CompartmentSignals,
    check_protocols,
    intensity_scale,
    protocol_at,
    refocusing_schedule,
)
from pipeline.phantom.anatomy import load_template_anatomy
from pipeline.phantom.contrasts import protocol_overrides, protocols
from pipeline.phantom.fine_anatomy import fine_grid
from pipeline.phantom.kspace import acquire_axis, line_weights, train_sample_of_lines
from pipeline.phantom.labels import FIT_NOISE_CV, add_fit_errors, slab_weights
from pipeline.phantom.simulate import simulate_subject, tissue_fractions, transmit_field
from pipeline.phantom.subject_parameters import SubjectParameters
from pipeline.phantom.study import VARIETY_GRID_MARGIN_MM, study_grid
from pipeline.phantom.tissues import COMPARTMENTS, TISSUES_3T
from tests.test_physics_mprage import simulate_mprage_readout_pulse_by_pulse

WHITE = TISSUES_3T["white_matter"]


@pytest.fixture(scope="module")
def anatomy():
    return load_template_anatomy()


def _simulate(anatomy, acquisition, index=0, held_out=False, planes=12, snr=30.0, protocols=None):
    parameters = SubjectParameters.draw(7, index, anatomy, acquisition=acquisition, held_out=held_out)
    margin = VARIETY_GRID_MARGIN_MM if acquisition.anatomical_variety else 6
    grid = study_grid(anatomy, sagittal_slices=planes, margin_mm=margin)
    return simulate_subject(anatomy, grid, parameters, snr=snr, acquisition=acquisition, protocols=protocols)


# ---------------------------------------------------------------------------------------------- switches


def test_presets_and_switches():
    realistic = Acquisition.preset("realistic")
    assert all(realistic.to_dict().values()) and not any(Acquisition.preset("ideal").to_dict().values())
    without = Acquisition.preset("realistic", ["fine_anatomy", "transmit_field"])
    assert not without.fine_anatomy and not without.transmit_field and without.mprage_readout
    assert Acquisition.from_dict(without.to_dict()) == without
    with pytest.raises(ValueError, match="unknown acquisition effect"):
        Acquisition.preset("realistic", ["gibbs"])
    with pytest.raises(ValueError, match="unknown acquisition"):
        Acquisition.preset("scanner")


@pytest.mark.parametrize("effect", ["mprage_readout", "tse_echo_train", "flair_variable_flip", "transmit_field"])
def test_each_image_effect_alone_changes_only_its_contrasts(anatomy, effect):
    ideal = _simulate(anatomy, Acquisition(), snr=np.inf)
    alone = _simulate(anatomy, Acquisition(**{effect: True}), snr=np.inf)
    np.testing.assert_array_equal(alone.t1_ms, ideal.t1_ms)  # the truth does not depend on the acquisition
    changed = {
        contrast: float(np.abs(alone.weighted[contrast] - ideal.weighted[contrast])[ideal.mask].mean())
        for contrast in ideal.weighted
    }
    expected = {
        "mprage_readout": {"mprage"},
        "tse_echo_train": {"tse"},
        "flair_variable_flip": {"flair"},
        "transmit_field": {"mprage", "flair"},  # the simplified TSE ignores flip angles, as the loss does
    }[effect]
    for contrast, difference in changed.items():
        if contrast in expected:
            assert difference > 1.0, (contrast, changed)  # intensity units: white matter = 1000
        else:  # the same simplified model, through the signal tables (interpolation error only)
            assert difference < 0.3, (contrast, changed)


# ---------------------------------------------------------------------------------------------- k-space


def test_truncation_is_the_band_limited_series_at_the_acquired_voxel_centres():
    n_out = 64
    fine = np.zeros(2 * n_out)
    fine[40:90] = 1.0  # a box: two sharp edges
    acquired = acquire_axis(torch.as_tensor(fine), 0, n_out).real.numpy()
    # independent: the DFT of the fine samples, lowest n_out frequencies, evaluated at fine position 2m + 1/2
    n = np.arange(2 * n_out)
    frequencies = np.arange(-n_out // 2, n_out // 2)
    coefficients = np.exp(-2j * np.pi * np.outer(frequencies, n) / (2 * n_out)) @ fine
    positions = 2 * np.arange(n_out) + 0.5
    expected = (np.exp(2j * np.pi * np.outer(positions, frequencies) / (2 * n_out)) @ coefficients).real / (2 * n_out)
    np.testing.assert_allclose(acquired, expected, atol=1e-9)
    # Gibbs ringing: over- and undershoot beside the edges; a constant keeps its value
    assert acquired.max() > 1.005 and acquired.min() < -0.005
    constant = acquire_axis(torch.ones(2 * n_out, dtype=torch.float64), 0, n_out).real.numpy()
    np.testing.assert_allclose(constant, 1.0, atol=1e-12)


def test_tse_point_spread_function_matches_the_analytic_t2_decay_across_k_space():
    n_lines, t2 = 128, 60.0
    protocol = physics.TSEProtocol(refocusing_angle=180.0)
    train = physics.tse_echo_train(1000.0, t2, 1.0, protocol)[None]
    weights = line_weights(train, 9, n_lines)[0]
    # linear ordering: the line at frequency u is acquired by echo floor(10 + 16 u + 1/2) (clipped to the train)
    u = np.fft.fftfreq(n_lines)
    echo_time = 9.3 * np.clip(np.floor(10 + 16 * u + 0.5), 1, 16)
    np.testing.assert_allclose(weights, np.exp(-(echo_time - 93.0) / t2), rtol=1e-9)
    point = torch.zeros(n_lines, dtype=torch.float64)
    point[n_lines // 2] = 1.0
    psf = np.abs(acquire_axis(point, 0, n_lines, weights).numpy())
    analytic = np.abs(np.fft.ifft(np.fft.fft(point.numpy()) * np.exp(-(echo_time - 93.0) / t2)))
    np.testing.assert_allclose(psf, analytic, atol=1e-12)
    assert np.sort(psf)[-2] > 0.05 * psf.max()  # T2 shorter than the train: the point spreads to its neighbours
    long_t2 = line_weights(physics.tse_echo_train(1000.0, 1e7, 1.0, protocol)[None], 9, n_lines)[0]
    sharp = np.abs(acquire_axis(point, 0, n_lines, long_t2).numpy())
    assert np.sort(sharp)[-2] < 1e-3 * sharp.max()  # a very long T2: no blur


def test_mprage_line_weights_follow_the_pulse_by_pulse_readout():
    protocol = physics.MPRAGEProtocol()
    t1_ms = np.array([832.0, 4000.0])
    stepped = simulate_mprage_readout_pulse_by_pulse(t1_ms, protocol)
    weights = line_weights(physics.mprage_readout(t1_ms, 1.0, protocol), protocol.centre_index, 195)
    sample = train_sample_of_lines(195, protocol.n_excitations, protocol.centre_index)
    expected = stepped[:, sample] / stepped[:, protocol.centre_index : protocol.centre_index + 1]
    np.testing.assert_allclose(weights, expected, rtol=1e-8)
    assert sample[0] == protocol.centre_index and sample.min() == 0 and sample.max() == protocol.n_excitations - 1
    # Mz is still inverted at the first excitations: negative k-space weights, more so for the long T1 of CSF
    assert weights[1].min() < weights[0].min() < 0 and np.ptp(weights[1]) > np.ptp(weights[0])


# ---------------------------------------------------------------------------------------------- B1+


def test_transmit_field_gives_the_closed_form_at_the_scaled_angles():
    acquisition = Acquisition(transmit_field=True, tse_echo_train=True)
    values = np.array([[WHITE.t1_ms, WHITE.t2_ms, WHITE.pd]])
    for contrast in ("mprage", "tse"):
        table = CompartmentSignals.tabulate(contrast, acquisition, values, np.array([0.03]), 64)
        for b1 in (0.88, 1.0, 1.1):
            looked_up = float(table.lookup(0, torch.zeros(1), torch.tensor([b1]))[0])
            scale = intensity_scale(contrast, acquisition)
            if contrast == "mprage":
                scaled = physics.MPRAGEProtocol(flip_angle=9.0 * b1, inversion_efficiency=-math.cos(math.pi * b1))
                expected = physics.mprage(WHITE.t1_ms, WHITE.pd, scaled)
            else:
                scaled = physics.TSEProtocol(refocusing_angle=150.0 * b1, excitation_angle=90.0 * b1)
                expected = physics.tse_epg(WHITE.t1_ms, WHITE.t2_ms, WHITE.pd, scaled)
            assert looked_up == pytest.approx(scale * expected, rel=2e-3), (contrast, b1)
    assert protocol_at("mprage", 1.0).inversion_efficiency == pytest.approx(1.0)


def test_a_texture_cv_per_parameter_scales_that_parameter_alone():
    acquisition = Acquisition(transmit_field=True, tse_echo_train=True)
    values = np.array([[WHITE.t1_ms, WHITE.t2_ms, WHITE.pd]])
    sigma, cv = 1.5, 0.06
    for contrast in ("mprage", "tse"):
        joint = CompartmentSignals.tabulate(contrast, acquisition, values, np.array([cv]), None)
        as_three = CompartmentSignals.tabulate(contrast, acquisition, values, np.array([[cv, cv, cv]]), None)
        np.testing.assert_allclose(as_three.centre, joint.centre, rtol=1e-12)
        t2_only = CompartmentSignals.tabulate(contrast, acquisition, values, np.array([[0.0, cv, 0.0]]), None)
        # direct: no texture, T2 itself multiplied by exp(cv * sigma)
        scaled = values * np.array([[1.0, math.exp(cv * sigma), 1.0]])
        direct = CompartmentSignals.tabulate(contrast, acquisition, scaled, np.array([0.0]), None)
        at_sigma = float(t2_only.lookup(0, torch.tensor([sigma]), torch.tensor([1.05]))[0])
        expected = float(direct.lookup(0, torch.zeros(1), torch.tensor([1.05]))[0])
        assert at_sigma == pytest.approx(expected, rel=2e-3), contrast
    # the MPRAGE does not see a T2 texture, the TSE does
    unchanged = float(t2_only.lookup(0, torch.zeros(1), None)[0])
    assert float(t2_only.lookup(0, torch.tensor([sigma]), None)[0]) > 1.05 * unchanged


SITE_PROTOCOLS = {"mprage": {"ti": 1000.0}, "tse": {"te": 120.0, "echo_spacing": 10.0}, "flair": {"ti": 2000.0}}
"""A new site's protocols (the TSE's TE a whole number of echo spacings, as its echo train needs)."""


def test_overridden_protocols_reach_every_train_and_keep_the_default_intensity_scale():
    acquisition = Acquisition(transmit_field=True, mprage_readout=True, tse_echo_train=True, flair_variable_flip=True)
    overrides = protocol_overrides(SITE_PROTOCOLS)
    values = np.array([[WHITE.t1_ms, WHITE.t2_ms, WHITE.pd]])
    for contrast in ("mprage", "tse", "flair"):
        site = physics.resolve_protocol(contrast, {**protocols()[contrast].to_dict(), **SITE_PROTOCOLS[contrast]})
        table = CompartmentSignals.tabulate(contrast, acquisition, values, np.array([0.03]), 64, overrides)
        scale = intensity_scale(contrast, acquisition)  # the default protocols': nominal white matter = 1000 there
        for b1 in (0.88, 1.1):
            eta = -math.cos(math.pi * b1)
            if contrast == "mprage":
                scaled = dataclasses.replace(site, flip_angle=9.0 * b1, inversion_efficiency=eta)
                expected = physics.mprage(WHITE.t1_ms, WHITE.pd, scaled)
            elif contrast == "tse":
                scaled = dataclasses.replace(site, refocusing_angle=150.0 * b1, excitation_angle=90.0 * b1)
                expected = physics.tse_epg(WHITE.t1_ms, WHITE.t2_ms, WHITE.pd, scaled)
            else:
                scaled = dataclasses.replace(site, excitation_angle=90.0 * b1, inversion_efficiency=eta)
                angles = [min(angle * b1, 180.0) for angle in refocusing_schedule(200, 100)[:101]]
                expected = physics.flair_echo_train(WHITE.t1_ms, WHITE.t2_ms, WHITE.pd, angles, scaled)[-1]
            assert protocol_at(contrast, b1, overrides) == scaled
            looked_up = float(table.lookup(0, torch.zeros(1), torch.tensor([b1]))[0])
            assert looked_up == pytest.approx(scale * expected, rel=2e-3), (contrast, b1)
    # the TSE train's k-space modulation: centre echo TE / ESP = 12 of the overridden train
    tse = physics.resolve_protocol("tse", SITE_PROTOCOLS["tse"])
    table = CompartmentSignals.tabulate("tse", acquisition, values, np.array([0.03]), 64, overrides)
    expected = line_weights(physics.tse_echo_train(WHITE.t1_ms, WHITE.t2_ms, WHITE.pd, tse)[None], 11, 64)
    np.testing.assert_allclose(table.line_weights, expected, rtol=1e-9)


def test_protocols_that_do_not_fit_the_acquisition_are_refused():
    off_the_echo_grid = protocol_overrides({"tse": {"te": 120.0}})  # 120 / 9.3 echo spacings
    check_protocols(Acquisition(), off_the_echo_grid)  # the simplified TSE takes any TE
    with pytest.raises(ValueError, match="whole number of echo spacings"):
        check_protocols(Acquisition(tse_echo_train=True), off_the_echo_grid)
    steep = protocol_overrides({"mprage": {"flip_angle": 160.0}})
    check_protocols(Acquisition(mprage_readout=True), steep)
    with pytest.raises(ValueError, match="flip_angle must be in"):  # 160 deg x B1+ 1.2
        check_protocols(Acquisition(transmit_field=True), steep)
    with pytest.raises(ValueError, match="whole number of echo spacings"):
        generate_study("unused", acquisition="realistic", protocols={"tse": {"te": 120.0}})


def test_tse_override_in_the_realistic_acquisition_changes_only_the_t2w(anatomy):
    # B1+ off: it moves the EPG echo amplitudes of either TE (the tabulation test checks it under overrides)
    acquisition = Acquisition.preset("realistic", ["transmit_field", "anatomical_variety", "label_acquisition"])
    default = _simulate(anatomy, acquisition, snr=np.inf)
    site = _simulate(anatomy, acquisition, snr=np.inf, protocols={"tse": SITE_PROTOCOLS["tse"]})
    for contrast in ("mprage", "flair"):
        np.testing.assert_array_equal(site.weighted[contrast], default.weighted[contrast])
    white = default.fractions[COMPARTMENTS.index("white_matter")] > 0.99
    t1_ms, t2_ms = default.t1_ms[white], default.t2_ms[white]
    longer = physics.resolve_protocol("tse", SITE_PROTOCOLS["tse"])
    expected = physics.tse_epg(t1_ms, t2_ms, 1.0, longer) / physics.tse_epg(t1_ms, t2_ms, 1.0, physics.TSEProtocol())
    ratio = site.weighted["tse"][white] / default.weighted["tse"][white]
    assert np.median(ratio / expected) == pytest.approx(1.0, abs=2e-3)  # the point-spread functions: +-0.5 %
    assert np.median(ratio) < 0.8  # darker: the intensity scale stays the default protocol's


def test_transmit_field_is_smooth_and_within_range(anatomy):
    parameters = SubjectParameters.draw(7, 0, anatomy, acquisition=Acquisition(transmit_field=True))
    field = transmit_field(parameters, study_grid(anatomy)).numpy()
    assert TRANSMIT_RANGE[0] <= field.min() and field.max() <= TRANSMIT_RANGE[1]
    assert 0.08 < field.max() - field.min() < 0.4  # +-10-20 % over the head
    assert np.abs(np.diff(field, axis=1)).max() < 0.01  # < 1 % per mm


def test_flair_schedule_is_space_like():
    centre = 100
    angles = np.array(refocusing_schedule(200, centre))
    assert angles[0] == pytest.approx(150.0) and angles[-1] == pytest.approx(150.0)
    assert angles[20:centre].max() < 42.0  # low-angle pseudo steady state
    assert np.all(np.diff(angles[centre:]) >= 0)


# ---------------------------------------------------------------------------------------------- anatomy


def test_fine_grid_splits_each_voxel(anatomy):
    grid = study_grid(anatomy, sagittal_slices=4)
    fine = fine_grid(grid)
    assert fine.shape == tuple(2 * n for n in grid.shape)
    for axis in range(3):
        coarse_centres = grid.axes_mm()[axis]
        pairs = fine.axes_mm()[axis].reshape(-1, 2)
        np.testing.assert_allclose(pairs.mean(axis=1), coarse_centres)
        np.testing.assert_allclose(pairs[:, 1] - pairs[:, 0], 0.5)


def test_fine_anatomy_has_sharper_boundaries_and_ringing(anatomy):
    ideal = _simulate(anatomy, Acquisition(), snr=np.inf)
    fine = _simulate(anatomy, Acquisition(fine_anatomy=True), snr=np.inf)
    white = COMPARTMENTS.index("white_matter")

    def partial_volume_share(volumes):
        fraction = volumes.fractions[white][volumes.mask]
        return np.mean((fraction > 0.05) & (fraction < 0.95))

    assert partial_volume_share(fine) < 0.6 * partial_volume_share(ideal)

    # k-space truncation rings: just outside the brain the noise-free image is not 0 as in the ideal one
    def outside(volumes):
        return volumes.weighted["mprage"][ndimage.binary_dilation(volumes.mask, iterations=2) & ~volumes.mask]

    assert np.abs(outside(ideal)).max() == 0.0
    assert np.abs(outside(fine)).mean() > 5.0


# ---------------------------------------------------------------------------------------------- variety


def test_anatomical_variety_makes_brains_differ_and_keeps_them_inside_the_grid(anatomy):
    def masks(acquisition):
        grid = study_grid(anatomy, margin_mm=VARIETY_GRID_MARGIN_MM)
        subjects = [SubjectParameters.draw(7, i, anatomy, acquisition=acquisition) for i in (0, 1)]
        return [tissue_fractions(anatomy, grid, parameters)[0] for parameters in subjects]

    def dice(a, b):
        return 2 * np.sum(a & b) / (a.sum() + b.sum())

    plain, varied = masks(Acquisition()), masks(Acquisition(anatomical_variety=True))
    assert dice(*varied) < dice(*plain) - 0.03
    for mask in varied:
        for axis in range(3):
            assert not np.take(mask, 0, axis=axis).any() and not np.take(mask, -1, axis=axis).any()
    held_out = SubjectParameters.draw(7, 2, anatomy, acquisition=Acquisition(anatomical_variety=True), held_out=True)
    assert held_out.variety.mirrored


# ---------------------------------------------------------------------------------------------- labels


def test_slice_profile_weights_integrate_a_smoothed_box():
    thickness, sigma = 3.5, 0.5
    weights = slab_weights(20, thickness, sigma)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_array_equal(slab_weights(20, thickness), slab_weights(20, thickness, 0.0))
    # independent: the box convolved with a Gaussian on a 0.001-voxel grid, summed per voxel
    z = (np.arange(20000) + 0.5) / 1000
    for slab in (1, 3):
        box = ((z >= slab * thickness) & (z < (slab + 1) * thickness)).astype(float)
        profile = ndimage.gaussian_filter1d(box, sigma * 1000, mode="constant")
        expected = profile.reshape(20, 1000).sum(axis=1)
        np.testing.assert_allclose(weights[slab], expected / expected.sum(), atol=1e-4)
    assert weights[1, 2] > 0 and weights[1, 7] > 0  # tails reach the neighbouring slabs' voxels
    assert weights[1, 0] == 0.0 and np.all(weights[1, 9:] == 0.0)  # and end: far voxels do not count at all


def test_label_fit_errors_have_their_spread_and_keep_background():
    label = np.full((40, 40, 20), 1000.0, dtype=np.float32)
    label[:, :, :2] = 0.0
    noisy = add_fit_errors((label, label, label), seed=1, subject_index=2)
    for map_noisy, cv in zip(noisy, FIT_NOISE_CV.values()):
        inside = map_noisy[:, :, 2:]
        assert np.all(map_noisy[:, :, :2] == 0.0)
        assert np.std(inside) / np.mean(inside) == pytest.approx(cv, rel=0.1)
        assert abs(np.mean(inside) / 1000.0 - 1.0) < 0.1  # a small per-subject bias
    again = add_fit_errors((label, label, label), seed=1, subject_index=2)
    np.testing.assert_array_equal(noisy[0], again[0])


# ---------------------------------------------------------------------------------------------- study


def test_realistic_study_is_deterministic_and_recorded(tmp_path):
    first = generate_study(tmp_path / "a", n_subjects=3, seed=3, sagittal_slices=4, acquisition="realistic")
    phantom_cli(
        [
            "--out",
            str(tmp_path / "b"),
            "--subjects",
            "3",
            "--seed",
            "3",
            "--sagittal-slices",
            "4",
            "--acquisition",
            "realistic",
        ]
    )
    for path in sorted(first.parent.rglob("*.nii.gz")):
        twin = tmp_path / "b" / path.relative_to(first.parent)
        assert path.read_bytes() == twin.read_bytes(), path.name
    manifest = json.loads(first.read_text())
    assert all(manifest["generator"]["acquisition"].values())
    record = json.loads((first.parent / "sub-01" / "phantom.json").read_text())
    assert record["acquisition"] == manifest["generator"]["acquisition"]
    phantom_cli(
        [
            "--out",
            str(tmp_path / "c"),
            "--subjects",
            "1",
            "--sagittal-slices",
            "2",
            "--acquisition",
            "realistic",
            "--without",
            "fine_anatomy",
            "label_acquisition",
        ]
    )
    flags = json.loads((tmp_path / "c" / "dataset.json").read_text())["generator"]["acquisition"]
    assert not flags["fine_anatomy"] and not flags["label_acquisition"] and flags["tse_echo_train"]
    assert pathlib.Path(tmp_path / "c" / "sub-01" / "t2_map.nii.gz").exists()
