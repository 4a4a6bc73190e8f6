"""Signal models against the pulse-by-pulse reference, an in-test recursion and their contracts."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from pipeline import physics
from pipeline.physics import spin_echo
from pipeline.physics import FLAIRProtocol, MPRAGEProtocol, TSEProtocol


def simulate_mprage_readout_pulse_by_pulse(t1_ms, protocol, n_inversions=80):
    """Mz/M0 stepped through ``n_inversions`` TR cycles; returns sin(alpha) Mz/M0 before every pulse of the last."""
    t1_ms = np.asarray(t1_ms, dtype=np.float64)
    alpha = math.radians(protocol.flip_angle)
    centre = protocol.n_excitations // 2
    pulse_times = [protocol.ti + (k - centre) * protocol.echo_spacing for k in range(protocol.n_excitations)]

    def relax(mz, duration):
        return 1.0 + (mz - 1.0) * np.exp(-duration / t1_ms)

    mz = np.ones_like(t1_ms)
    for _ in range(n_inversions):
        mz = -protocol.inversion_efficiency * mz
        now, train = 0.0, []
        for pulse_time in pulse_times:
            mz = relax(mz, pulse_time - now)
            now = pulse_time
            train.append(math.sin(alpha) * mz)
            mz = mz * math.cos(alpha)
        mz = relax(mz, protocol.tr - now)
    return np.stack(train, axis=-1)


def simulate_mprage_pulse_by_pulse(t1_ms, protocol, n_inversions=80):
    """sin(alpha) |Mz|/M0 before the centre pulse (:func:`simulate_mprage_readout_pulse_by_pulse`)."""
    return np.abs(
        simulate_mprage_readout_pulse_by_pulse(t1_ms, protocol, n_inversions)[..., protocol.n_excitations // 2]
    )


def test_mprage_matches_every_reference_case(physics_reference):
    cases = physics_reference["mprage"]["cases"]
    for case in cases:
        protocol = MPRAGEProtocol(
            n_excitations=case["N"],
            echo_spacing=case["ESP_ms"],
            inversion_efficiency=case.get("inversion_efficiency", 1.0),
        )
        signal = physics.mprage(np.float64(case["T1_ms"]), 1.0, protocol)
        assert signal == pytest.approx(case["signal_over_M0"], rel=1e-5), case


def test_mprage_reference_protocol_is_the_default(physics_reference):
    described = physics_reference["mprage"]["protocol"]
    default = MPRAGEProtocol()
    assert (default.tr, default.ti, default.te, default.flip_angle) == (
        described["TR_ms"],
        described["TI_ms"],
        described["TE_ms"],
        described["flip_deg"],
    )


@pytest.mark.parametrize(
    "protocol",
    [
        MPRAGEProtocol(
            tr=2300.0, ti=1000.0, flip_angle=12.0, echo_spacing=8.0, n_excitations=120, inversion_efficiency=0.95
        ),
        MPRAGEProtocol(
            tr=2500.0, ti=1100.0, flip_angle=7.0, echo_spacing=6.5, n_excitations=191, inversion_efficiency=0.9
        ),
    ],
)
def test_mprage_closed_form_equals_pulse_by_pulse_recursion(protocol):
    t1_ms = np.array([300.0, 832.0, 1331.0, 2500.0, 4000.0])
    expected = simulate_mprage_pulse_by_pulse(t1_ms, protocol)
    np.testing.assert_allclose(physics.mprage(t1_ms, 1.0, protocol), expected, rtol=1e-9)


def test_mprage_t2star_decay_and_m0_scaling():
    protocol = MPRAGEProtocol(t2star=40.0)
    plain = physics.mprage(900.0, 2.0)
    assert physics.mprage(900.0, 2.0, protocol) == pytest.approx(plain * math.exp(-2.93 / 40.0), rel=1e-12)
    assert physics.mprage(900.0, 2.0) == pytest.approx(2.0 * physics.mprage(900.0, 1.0), rel=1e-12)


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


def test_flair_nulls_t1_of_ti_over_ln2_for_long_tr():
    long_tr = FLAIRProtocol(tr=1e7)
    assert physics.flair(1800.0 / math.log(2.0), 1e4, 1.0, long_tr) < 1e-9
    assert physics.flair(832.0, 1e4, 1.0, long_tr) > 0.5


def test_flair_darkens_csf_relative_to_white_matter(physics_reference):
    tissues = physics_reference["tissues_3T"]
    t1 = np.array([tissues["white_matter"]["T1"], tissues["csf"]["T1"]], dtype=np.float64)
    white_matter, csf = physics.flair(t1, 100.0, 1.0)  # equal T2: the inversion contrast alone
    assert csf < 0.2 * white_matter


@pytest.mark.parametrize("contrast", ["mprage", "tse", "flair"])
def test_numpy_torch_parity_dtype_and_broadcast(contrast):
    rng = np.random.default_rng(0)
    t1 = rng.uniform(200.0, 4000.0, size=(4, 1)).astype(np.float32)
    t2 = rng.uniform(20.0, 2000.0, size=(3,)).astype(np.float32)
    m0 = np.float32(0.8)
    from_numpy = physics.synthesize(contrast, t1, t2, m0)
    from_torch = physics.synthesize(contrast, torch.from_numpy(t1), torch.from_numpy(t2), m0)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32 and from_numpy.shape == (4, 3)
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32 and from_torch.shape == (4, 3)
    np.testing.assert_allclose(from_numpy, from_torch.numpy(), rtol=1e-6)
    double = physics.synthesize(contrast, torch.from_numpy(t1).double(), t2.astype(np.float64), 0.8)
    assert double.dtype == torch.float64
    np.testing.assert_allclose(double.numpy(), from_numpy, rtol=1e-5)
    assert physics.synthesize(contrast, t1.astype(np.float64), t2, 0.8).dtype == np.float64
    scalar = physics.synthesize(contrast, 900.0, 90.0, 1.0)
    assert np.ndim(scalar) == 0 and np.isfinite(scalar)


def test_public_functions_and_registry_agree():
    t1, t2, m0 = np.array([832.0, 1331.0]), np.array([79.2, 110.0]), np.array([0.69, 0.82])
    np.testing.assert_array_equal(physics.synthesize("mprage", t1, t2, m0), physics.mprage(t1, m0))
    np.testing.assert_array_equal(physics.synthesize("tse", t1, t2, m0), physics.tse(t1, t2, m0))
    np.testing.assert_array_equal(physics.synthesize("flair", t1, t2, m0), physics.flair(t1, t2, m0))
    custom = {"te": 120.0}
    np.testing.assert_array_equal(
        physics.synthesize("tse", t1, t2, m0, custom), physics.tse(t1, t2, m0, TSEProtocol(te=120.0))
    )
    np.testing.assert_array_equal(physics.synthesize("tse_epg", t1, t2, m0), physics.tse_epg_tabulated(t1, t2, m0))
    assert set(physics.SIGNAL_MODELS) == {"mprage", "tse", "flair", "tse_epg"}
    assert physics.MAP_UNIT_MS == 3000.0
    with pytest.raises(ValueError, match="unknown contrast 'dwi'"):
        physics.synthesize("dwi", t1, t2, m0)
    with pytest.raises(TypeError, match="TSEProtocol"):
        physics.synthesize("tse", t1, t2, m0, MPRAGEProtocol())


@pytest.mark.parametrize("protocol_type", [MPRAGEProtocol, TSEProtocol, FLAIRProtocol])
def test_protocols_round_trip_and_are_frozen(protocol_type):
    protocol = protocol_type()
    assert protocol_type.from_dict(protocol.to_dict()) == protocol
    with pytest.raises(dataclasses.FrozenInstanceError):
        protocol.tr = 1.0
    with pytest.raises(ValueError, match="unknown field"):
        protocol_type.from_dict({"tr": 5000.0, "typo": 1.0})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MPRAGEProtocol(ti=500.0), "starts before the inversion"),
        (lambda: MPRAGEProtocol(tr=1500.0), "does not fit in tr"),
        (lambda: MPRAGEProtocol(flip_angle=0.0), "flip_angle"),
        (lambda: MPRAGEProtocol(inversion_efficiency=1.2), "inversion_efficiency"),
        (lambda: TSEProtocol(tr=100.0), "does not fit in tr"),
        (lambda: TSEProtocol(te=200.0), "te must be in"),
        (lambda: FLAIRProtocol(ti=4500.0), "does not fit in tr - ti"),
    ],
)
def test_invalid_protocols_raise_naming_values(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_mprage_timing_error_names_the_values():
    with pytest.raises(ValueError) as error:
        MPRAGEProtocol(ti=500.0)
    assert "500.0 - 88 * 7.0 = -116.0" in str(error.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model", ["mprage", "tse", "flair", "tse_epg"])
def test_values_and_gradients_finite_at_extremes(model, dtype):
    extremes = torch.tensor([0.0, 1e-4, 1.0, 10.0, 1000.0, 10000.0], dtype=dtype)
    t1, t2 = torch.meshgrid(extremes, extremes, indexing="ij")
    t1, t2 = t1.clone().requires_grad_(), t2.clone().requires_grad_()
    m0 = torch.tensor([0.0, 1.0], dtype=dtype).view(2, 1, 1).requires_grad_()
    if model == "tse_epg":
        signal = physics.tse_epg(t1, t2, m0)
    else:
        signal = physics.synthesize(model, t1, t2, m0)
    assert signal.shape == (2, 6, 6) and signal.dtype == dtype
    assert torch.isfinite(signal).all() and (signal >= 0).all()
    signal.sum().backward()
    for grad in (t1.grad, m0.grad) + ((t2.grad,) if model != "mprage" else ()):
        assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------------------------- whole trains


def test_mprage_readout_is_the_pulse_by_pulse_train_and_its_centre_is_mprage():
    protocol = MPRAGEProtocol(flip_angle=10.5, inversion_efficiency=0.93)
    t1_ms = np.array([380.0, 832.0, 1331.0, 4000.0])
    readout = physics.mprage_readout(t1_ms, 0.8, protocol)
    assert readout.shape == (4, protocol.n_excitations)
    np.testing.assert_allclose(
        readout, 0.8 * simulate_mprage_readout_pulse_by_pulse(t1_ms, protocol), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        np.abs(readout[:, protocol.centre_index]), physics.mprage(t1_ms, 0.8, protocol), rtol=1e-12
    )
    assert readout[-1, 0] < 0 < readout[-1, -1]  # CSF is still inverted when the readout starts


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


def test_inversion_recovery_with_imperfect_inversion_matches_stepping_mz():
    protocol = FLAIRProtocol(inversion_efficiency=0.8)
    t1_ms = np.array([832.0, 1331.0, 4000.0])
    train = protocol.echo_train_length * protocol.echo_spacing
    mz = np.ones_like(t1_ms)
    for _ in range(30):  # Mz = 0 after each train, regrowth, inversion, recovery to TI
        mz = 1.0 - np.exp(-(protocol.tr - protocol.ti - train) / t1_ms)
        mz = 1.0 + (-0.8 * mz - 1.0) * np.exp(-protocol.ti / t1_ms)
    np.testing.assert_allclose(physics.inversion_recovery(t1_ms, protocol), mz, rtol=1e-12)
    perfect = physics.inversion_recovery(t1_ms, FLAIRProtocol())
    np.testing.assert_allclose(np.abs(perfect) * np.exp(-352.0 / 100.0), physics.flair(t1_ms, 100.0, 1.0), rtol=1e-12)


def test_flair_echo_train_is_inversion_recovery_times_the_cpmg_train():
    protocol = FLAIRProtocol(ti=1200.0, excitation_angle=80.0, inversion_efficiency=0.95)
    angles = list(np.linspace(150.0, 40.0, protocol.echo_train_length))
    t1, t2 = np.array([832.0, 4000.0]), np.array([79.2, 2000.0])
    train = physics.flair_echo_train(t1, t2, 0.7, angles, protocol)
    expected = (
        0.7
        * math.sin(math.radians(80.0))
        * physics.inversion_recovery(t1, protocol)[:, None]
        * physics.cpmg_echo_train(t1, t2, angles, protocol.echo_spacing)
    )
    np.testing.assert_allclose(train, expected, rtol=1e-12)
    assert train[1, 0] < 0 < train[0, 0]  # CSF still inverted at TI = 1200 ms
    np.testing.assert_allclose(physics.flair_echo_train(t1, t2, 0.7, angles[:50], protocol), train[:, :50], rtol=1e-12)
    with pytest.raises(ValueError, match="refocusing angles"):
        physics.flair_echo_train(t1, t2, 0.7, [*angles, 90.0], protocol)


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
