"""The MPRAGE signal model (pipeline.physics.mprage_signal) against the pulse-by-pulse reference and an in-test recursion."""

import math

import numpy as np
import pytest

from pipeline import physics
from pipeline.physics import MPRAGEProtocol


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


def test_mprage_timing_error_names_the_values():
    with pytest.raises(ValueError) as error:
        MPRAGEProtocol(ti=500.0)
    assert "500.0 - 88 * 7.0 = -116.0" in str(error.value)


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
