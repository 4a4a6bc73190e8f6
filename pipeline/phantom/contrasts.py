"""The three weighted acquisitions of the phantom: protocols, signed compartment signals, intensity scale.

Signals come from :func:`pipeline.physics.synthesize` (never re-derived here) with the paper's
protocols, except one documented change: the simplified FLAIR model of :mod:`pipeline.physics`
(Mz = 0 after the echo train) does not null CSF at the paper's TI = 1800 ms (that TI nulls CSF on the
real 3D SPACE sequence). The phantom's FLAIR therefore uses the TI at which that model nulls CSF
(nominal T1/T2 of :data:`~pipeline.phantom.tissues.TISSUES_3T`), so that CSF is dark as on the scanner.

Compartments are mixed in the complex signal domain: inversion-recovery magnitudes are signed by
whether the compartment's T1 is below (+) or above (-) the T1 whose signal is nulled, so partial-volume
voxels of a tissue and a nulled fluid cancel as on a real magnitude image.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline import physics
from pipeline.phantom.tissues import TISSUES_3T

CONTRASTS = ("mprage", "tse", "flair")
"""Signal-model names (:data:`pipeline.physics.SIGNAL_MODELS`) in the channel order T1w, T2w, FLAIR."""

WHITE_MATTER_INTENSITY = 1000.0
"""Image intensity of nominal pure white matter (without receive bias) in every contrast."""

T1_SEARCH_RANGE_MS = (50.0, 20000.0)
"""T1 range searched for a signal null (beyond any tissue's T1)."""


def _null_location(magnitude, bounds: tuple[float, float], n_samples: int = 64) -> float | None:
    """First argument inside ``bounds`` where the scalar function ``magnitude`` (>= 0) is 0, else ``None``.

    The minima of ``magnitude`` on a geometric grid are refined with a bounded Brent search; a refined
    minimum counts as a null if it is below 1e-6 of the largest sampled value.
    """
    samples = np.geomspace(*bounds, n_samples)
    values = np.array([magnitude(x) for x in samples])
    for i in np.flatnonzero((values[1:-1] <= values[:-2]) & (values[1:-1] <= values[2:])) + 1:
        result = minimize_scalar(
            magnitude, bounds=(samples[i - 1], samples[i + 1]), method="bounded", options={"xatol": 1e-9}
        )
        if result.fun <= 1e-6 * values.max():
            return float(result.x)
    return None


@functools.lru_cache(maxsize=1)
def protocols() -> dict[str, physics.MPRAGEProtocol | physics.TSEProtocol | physics.FLAIRProtocol]:
    """Protocol of each contrast: the paper's (physics defaults), FLAIR with its TI nulling nominal CSF."""
    csf = TISSUES_3T["csf"]
    flair = physics.FLAIRProtocol()
    latest_ti = flair.tr - flair.echo_train_length * flair.echo_spacing
    null_ti = _null_location(
        lambda ti: float(physics.flair(csf.t1_ms, csf.t2_ms, 1.0, physics.FLAIRProtocol(ti=ti))), (1.0, latest_ti)
    )
    return {
        "mprage": physics.MPRAGEProtocol(),
        "tse": physics.TSEProtocol(),
        "flair": physics.FLAIRProtocol(ti=null_ti),
    }


@functools.cache
def null_t1_ms(contrast: str) -> float:
    """T1 (ms) whose signal ``contrast`` nulls (sign change of Mz at the k-space centre); ``inf`` if none.

    T2 only scales these signals, so the null is searched at a fixed T2 of 100 ms.
    """
    protocol = protocols()[contrast]
    null = _null_location(lambda t1: float(physics.synthesize(contrast, t1, 100.0, 1.0, protocol)), T1_SEARCH_RANGE_MS)
    return np.inf if null is None else null


def signed_signal(contrast: str, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray) -> np.ndarray:
    """Signed (real) signal of one compartment, in units where nominal white matter gives 1000.

    Args:
        contrast: one of :data:`CONTRASTS`.
        t1_ms, t2_ms, pd: broadcastable float32 arrays of the compartment's T1, T2 (ms) and PD.

    Returns:
        float32 array, negative where T1 is beyond the contrast's null (inverted magnetisation).
    """
    return signed_magnitude(contrast, t1_ms, t2_ms, pd) * np.float32(intensity_scale(contrast))


def signed_magnitude(contrast: str, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, protocol=None) -> np.ndarray:
    """The simplified model's magnitude (:func:`pipeline.physics.synthesize`), negative beyond the contrast's null T1.

    Args:
        contrast, t1_ms, t2_ms, pd: as :func:`signed_signal`.
        protocol: the contrast's protocol (default: :func:`protocols`); the null is that of the default protocol.

    Returns:
        signal in M0 units (no intensity scale).
    """
    magnitude = physics.synthesize(contrast, t1_ms, t2_ms, pd, protocol or protocols()[contrast])
    return magnitude * np.where(t1_ms < null_t1_ms(contrast), np.float32(1.0), np.float32(-1.0))


@functools.cache
def intensity_scale(contrast: str) -> float:
    """Factor from signal (M0 units) to image intensity: nominal white matter → :data:`WHITE_MATTER_INTENSITY`."""
    white = TISSUES_3T["white_matter"]
    return WHITE_MATTER_INTENSITY / float(
        physics.synthesize(contrast, white.t1_ms, white.t2_ms, white.pd, protocols()[contrast])
    )
