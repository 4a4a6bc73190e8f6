"""The signal models' shared contracts: the registry, protocols, numpy/torch parity, finite values and gradients."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline import physics
from pipeline.physics import FLAIRProtocol, MPRAGEProtocol, TSEProtocol


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
