"""FLAIR and inversion recovery (pipeline.physics.flair_signal) against closed forms and stepped magnetisation."""

import math

import numpy as np
import pytest

from pipeline import physics
from pipeline.physics import FLAIRProtocol


def test_flair_nulls_t1_of_ti_over_ln2_for_long_tr():
    long_tr = FLAIRProtocol(tr=1e7)
    assert physics.flair(1800.0 / math.log(2.0), 1e4, 1.0, long_tr) < 1e-9
    assert physics.flair(832.0, 1e4, 1.0, long_tr) > 0.5


def test_flair_darkens_csf_relative_to_white_matter(physics_reference):
    tissues = physics_reference["tissues_3T"]
    t1 = np.array([tissues["white_matter"]["T1"], tissues["csf"]["T1"]], dtype=np.float64)
    white_matter, csf = physics.flair(t1, 100.0, 1.0)  # equal T2: the inversion contrast alone
    assert csf < 0.2 * white_matter


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
