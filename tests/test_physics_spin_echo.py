"""TSE and its EPG echo trains (pipeline.physics.spin_echo, epg) against the reference, an isochromat simulation and the table."""

import math

import numpy as np
import pytest
import torch

from pipeline import physics
from pipeline.physics import TSEProtocol, spin_echo


def test_tse_matches_reference(physics_reference):
    protocol = physics_reference["tse"]["protocol"]
    assert (TSEProtocol().tr, TSEProtocol().te, TSEProtocol().echo_spacing, TSEProtocol().echo_train_length) == (
        protocol["TR_ms"],
        protocol["TE_eff_ms"],
        protocol["ESP_ms"],
        protocol["ETL"],
    )
    for case in physics_reference["tse"]["cases"]:
        signal = physics.tse(case["T1_ms"], case["T2_ms"], 1.0)
        assert signal == pytest.approx(case["simplified_model_signal_over_M0"], abs=1e-5), case["tissue"]


def test_tse_epg_first_train_matches_reference(physics_reference):
    # TR -> infinity makes the saturation-recovery factor exactly 1: one train from Mz = M0
    first_train = TSEProtocol(tr=1e7)
    for case in physics_reference["tse"]["cases"]:
        t1, t2 = torch.tensor(case["T1_ms"], dtype=torch.float64), torch.tensor(case["T2_ms"], dtype=torch.float64)
        signal = physics.tse_epg(t1, t2, 1.0, first_train)
        assert float(signal) == pytest.approx(case["epg_150deg_echo10_first_train_over_M0"], abs=1e-5), case["tissue"]


def test_tse_epg_with_ideal_refocusing_is_the_simplified_model(physics_reference):
    ideal = TSEProtocol(refocusing_angle=180.0, tr=1e7)
    for case in physics_reference["tse"]["cases"]:
        signal = physics.tse_epg(case["T1_ms"], case["T2_ms"], 1.0, ideal)
        assert signal == pytest.approx(math.exp(-93.0 / case["T2_ms"]), rel=1e-10)
    t1, t2 = np.array([832.0, 1331.0]), np.array([79.2, 110.0])
    np.testing.assert_allclose(
        physics.tse_epg(t1, t2, 0.7, TSEProtocol(refocusing_angle=180.0)), physics.tse(t1, t2, 0.7), rtol=1e-10
    )


def test_tse_epg_needs_te_on_an_echo():
    with pytest.raises(ValueError, match="whole number of echo spacings"):
        physics.tse_epg(800.0, 80.0, 1.0, TSEProtocol(te=95.0))


def simulate_cpmg_isochromats(t1_ms, t2_ms, refocusing_deg, echo_spacing, n_isochromats=720):
    """Echo amplitudes of a CPMG train by Bloch rotations of isochromats dephased over 2 pi per ESP/2 (no EPG)."""
    phases = 2.0 * np.pi * (np.arange(n_isochromats) + 0.5) / n_isochromats
    magnetisation = np.zeros((n_isochromats, 3))
    magnetisation[:, 0] = 1.0  # after a 90 deg excitation about y: along x (CPMG: refocusing about x)
    e1, e2 = math.exp(-0.5 * echo_spacing / t1_ms), math.exp(-0.5 * echo_spacing / t2_ms)

    def free_precession(m):
        cos, sin = np.cos(phases), np.sin(phases)
        mx, my = m[:, 0] * cos - m[:, 1] * sin, m[:, 0] * sin + m[:, 1] * cos
        return np.stack([mx * e2, my * e2, 1.0 + (m[:, 2] - 1.0) * e1], axis=1)

    echoes = []
    for angle in refocusing_deg:
        beta = math.radians(angle)
        rotation = np.array([[1, 0, 0], [0, math.cos(beta), -math.sin(beta)], [0, math.sin(beta), math.cos(beta)]])
        magnetisation = free_precession(magnetisation) @ rotation.T
        magnetisation = free_precession(magnetisation)
        echoes.append(magnetisation[:, 0].mean())
    return np.array(echoes)


@pytest.mark.parametrize(
    "angles",
    [[150.0] * 16, [180.0 - 9.0 * k for k in range(12)], [160.0, 120.0, 80.0, 60.0, 50.0, 45.0, 60.0, 90.0, 130.0]],
)
def test_cpmg_echo_train_matches_an_isochromat_bloch_simulation(angles):
    expected = simulate_cpmg_isochromats(900.0, 90.0, angles, 9.3)
    np.testing.assert_allclose(physics.cpmg_echo_train(900.0, 90.0, angles, 9.3), expected, atol=2e-4)


def test_cpmg_echo_train_reference_values_and_ideal_refocusing(physics_reference):
    for case in physics_reference["tse"]["cases"]:
        train = physics.cpmg_echo_train(case["T1_ms"], case["T2_ms"], [150.0] * 16, 9.3)
        assert train[9] == pytest.approx(case["epg_150deg_echo10_first_train_over_M0"], abs=1e-5), case["tissue"]
        ideal = physics.cpmg_echo_train(case["T1_ms"], case["T2_ms"], [180.0] * 16, 9.3)
        np.testing.assert_allclose(ideal, np.exp(-9.3 * np.arange(1, 17) / case["T2_ms"]), rtol=1e-10)


def test_tse_echo_train_centre_is_tse_epg_and_excitation_scales_by_its_sine():
    t1, t2 = np.array([832.0, 4000.0]), np.array([79.2, 2000.0])
    train = physics.tse_echo_train(t1, t2, 0.9)
    np.testing.assert_allclose(train[:, 9], physics.tse_epg(t1, t2, 0.9), rtol=1e-12)
    weak = physics.tse_echo_train(t1, t2, 0.9, TSEProtocol(excitation_angle=72.0))
    np.testing.assert_allclose(weak, train * math.sin(math.radians(72.0)), rtol=1e-12)


@pytest.mark.parametrize("refocusing_angle", [150.0, 120.0, 180.0])
def test_tabulated_epg_matches_the_recursion_in_value_and_gradient(refocusing_angle):
    """The loss's table of the centre-echo amplitude agrees with the EPG recursion it is filled from."""
    protocol = TSEProtocol(refocusing_angle=refocusing_angle)
    rng = np.random.default_rng(3)
    t1 = torch.tensor(np.exp(rng.uniform(np.log(200.0), np.log(6000.0), 2000)), requires_grad=True)
    t2 = torch.tensor(np.exp(rng.uniform(np.log(20.0), np.log(3000.0), 2000)), requires_grad=True)
    m0 = torch.tensor(rng.uniform(0.3, 1.0, 2000))
    exact = physics.tse_epg(t1, t2, m0, protocol)
    tabulated = physics.tse_epg_tabulated(t1, t2, m0, protocol)
    torch.testing.assert_close(tabulated, exact, rtol=5e-4, atol=0.0)
    exact_grads = torch.autograd.grad(exact.sum(), (t1, t2))
    table_grads = torch.autograd.grad(tabulated.sum(), (t1, t2))
    # piecewise-linear interpolation: the slope is a secant of the table cell, close to the tangent
    for table_grad, exact_grad in zip(table_grads, exact_grads):
        assert (table_grad - exact_grad).abs().max() < 0.05 * exact_grad.abs().max()
        assert ((table_grad - exact_grad).abs() / exact_grad.abs()).median() < 0.01
    beyond, edge = physics.tse_epg_tabulated(800.0, np.array([1e6, 3e4]), 1.0, protocol)  # T2 past the table
    assert beyond == pytest.approx(edge, rel=1e-12)


def test_the_epg_table_is_filled_once_per_protocol_and_read_from_disk_after(tmp_path, monkeypatch):
    """A new process reads the table from ``$QMAP_HYBRID_CACHE/epg_tables`` instead of filling it again (seconds);
    another protocol has a table (and a file) of its own."""
    monkeypatch.setenv("QMAP_HYBRID_CACHE", str(tmp_path))
    spin_echo._centre_echo_table.cache_clear()
    filled = spin_echo._centre_echo_table(TSEProtocol()).clone()
    (stored,) = (tmp_path / "epg_tables").glob("*.npy")
    np.testing.assert_array_equal(np.load(stored), filled[0, 0].numpy())
    spin_echo._centre_echo_table.cache_clear()  # as in a new process

    def refill(protocol):
        raise AssertionError("the table was filled again instead of read from disk")

    monkeypatch.setattr(spin_echo, "_fill_centre_echo_table", refill)
    assert torch.equal(spin_echo._centre_echo_table(TSEProtocol()), filled)
    monkeypatch.undo()
    monkeypatch.setenv("QMAP_HYBRID_CACHE", str(tmp_path))
    other = spin_echo._centre_echo_table(TSEProtocol(refocusing_angle=120.0))
    assert len(list((tmp_path / "epg_tables").glob("*.npy"))) == 2 and not torch.equal(other, filled)
    spin_echo._centre_echo_table.cache_clear()  # no other test sees this folder's tables
