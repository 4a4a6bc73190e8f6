"""The three weighted acquisitions of the phantom: protocols, signed compartment signals, intensity scale.

Signals come from :func:`pipeline.physics.synthesize` (never re-derived here) with the paper's
protocols, except one documented change: the simplified FLAIR model of :mod:`pipeline.physics`
(Mz = 0 after the echo train) does not null CSF at the paper's TI = 1800 ms (that TI nulls CSF on the
real 3D SPACE sequence). The phantom's FLAIR therefore uses the TI at which that model nulls CSF
(nominal T1/T2 of :data:`~pipeline.phantom.tissues.TISSUES_3T`), so that CSF is dark as on the scanner.

A study may image its subjects with another protocol (a new site's): :func:`protocol_overrides` validates
``{contrast: {field: value}}`` overrides of these default protocols into a hashable form that every function
taking ``overrides`` accepts (``()``: the defaults). The image intensity scale stays that of the *default*
protocols (:func:`intensity_scale`), as with a scanner's fixed receive gain: a longer TE gives darker images.

Compartments are mixed in the complex signal domain: inversion-recovery magnitudes are signed by
whether the compartment's T1 is below (+) or above (-) the T1 whose signal is nulled, so partial-volume
voxels of a tissue and a nulled fluid cancel as on a real magnitude image.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline import physics
from pipeline.phantom.tissues import TISSUES_3T

CONTRASTS = ("mprage", "tse", "flair")
"""Signal-model names (:data:`pipeline.physics.SIGNAL_MODELS`) in the channel order T1w, T2w, FLAIR."""

WHITE_MATTER_INTENSITY = 1000.0
"""Image intensity of nominal pure white matter (without receive bias) in every contrast under the default protocols."""

T1_SEARCH_RANGE_MS = (50.0, 20000.0)
"""T1 range searched for a signal null (beyond any tissue's T1)."""

ProtocolOverrides = tuple[tuple[str, tuple[tuple[str, float | int], ...]], ...]
"""Hashable protocol overrides ``((contrast, ((field, value), ...)), ...)`` (:func:`protocol_overrides`): contrasts in
:data:`CONTRASTS` order, fields in their dataclass's order, times in ms, angles in degrees; ``()``: the defaults."""


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


def _override_value(contrast: str, field: dataclasses.Field, value) -> float | int:
    """``value`` (a number or its string) as the type of ``field``'s default: a whole number for integer fields."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"protocol override {contrast}.{field.name} must be a number, got {value!r}") from None
    if isinstance(field.default, int):
        if not number.is_integer():
            raise ValueError(f"protocol override {contrast}.{field.name} must be a whole number, got {value!r}")
        return int(number)
    return number


def protocol_overrides(
    overrides: Mapping[str, Mapping[str, float]] | ProtocolOverrides | None = None,
) -> ProtocolOverrides:
    """Validated, hashable form of overrides of the default protocols (:func:`protocols`).

    Args:
        overrides: ``{contrast: {field: value}}`` with contrasts of :data:`CONTRASTS` and fields of their
            :mod:`pipeline.physics` protocol dataclass (times in ms, angles in degrees; numbers or their strings),
            e.g. ``{"tse": {"te": 120.0}}``; or an already normalised :data:`ProtocolOverrides`; ``None``: none.

    Returns:
        the :data:`ProtocolOverrides` (contrasts without fields dropped; ``()`` without overrides).

    Raises:
        ValueError: an unknown contrast or field, a value that is not a number (a whole number for integer
            fields), or overridden protocols that are invalid (the protocol dataclass's own message).
    """
    requested = dict(overrides or {})
    unknown = sorted(set(requested) - set(CONTRASTS))
    if unknown:
        raise ValueError(f"protocol overrides for unknown contrast(s) {unknown}: expected some of {list(CONTRASTS)}")
    normalised = []
    for contrast in (name for name in CONTRASTS if requested.get(name)):
        fields = dict(requested[contrast])
        known = dataclasses.fields(physics.SIGNAL_MODELS[contrast].protocol_type)
        unknown = sorted(set(fields) - {field.name for field in known})
        if unknown:
            raise ValueError(
                f"protocol overrides for unknown {contrast} field(s) {unknown}: expected some of "
                f"{[field.name for field in known]}"
            )
        values = tuple(
            (field.name, _override_value(contrast, field, fields[field.name]))
            for field in known
            if field.name in fields
        )
        normalised.append((contrast, values))
    normalised = tuple(normalised)
    try:
        protocols(normalised)  # builds the protocols: invalid ones raise here, before any subject is simulated
    except ValueError as error:
        raise ValueError(
            f"protocol overrides {overrides_as_dict(normalised)} give an invalid protocol: {error}"
        ) from error
    return normalised


def overrides_as_dict(overrides: ProtocolOverrides) -> dict[str, dict[str, float | int]]:
    """JSON-friendly ``{contrast: {field: value}}`` of :data:`ProtocolOverrides` (undoes :func:`protocol_overrides`)."""
    return {contrast: dict(values) for contrast, values in overrides}


def _flair_nulling_csf(fields: Mapping[str, float | int]) -> physics.FLAIRProtocol:
    """The FLAIR protocol with ``fields`` (no ``ti``) whose TI nulls nominal CSF in the simplified model."""
    csf = TISSUES_3T["csf"]
    timing = {**physics.FLAIRProtocol().to_dict(), **fields}
    latest_ti = timing["tr"] - timing["echo_train_length"] * timing["echo_spacing"]
    null_ti = (
        _null_location(
            lambda ti: float(
                physics.flair(csf.t1_ms, csf.t2_ms, 1.0, physics.FLAIRProtocol.from_dict({**fields, "ti": ti}))
            ),
            (1.0, latest_ti),
        )
        if latest_ti > 1.0
        else None
    )
    if null_ti is None:
        raise ValueError(f"no FLAIR TI in (1, {latest_ti}] ms nulls nominal CSF with {dict(fields)}: give flair.ti")
    return physics.FLAIRProtocol.from_dict({**fields, "ti": null_ti})


@functools.lru_cache(maxsize=16)
def protocols(
    overrides: ProtocolOverrides = (),
) -> dict[str, physics.MPRAGEProtocol | physics.TSEProtocol | physics.FLAIRProtocol]:
    """Protocol of each contrast: the paper's (physics defaults), FLAIR's TI nulling nominal CSF, then ``overrides``.

    Args:
        overrides: :func:`protocol_overrides`' form. FLAIR without an overridden ``ti`` keeps the TI that nulls
            nominal CSF with its (overridden) timing; an explicit ``flair.ti`` replaces it (CSF is then not nulled).
    """
    fields = overrides_as_dict(overrides)
    built = {
        contrast: physics.SIGNAL_MODELS[contrast].protocol_type.from_dict(fields.get(contrast, {}))
        for contrast in ("mprage", "tse")
    }
    flair = fields.get("flair", {})
    built["flair"] = physics.FLAIRProtocol.from_dict(flair) if "ti" in flair else _flair_nulling_csf(flair)
    return built


@functools.cache
def null_t1_ms(contrast: str, overrides: ProtocolOverrides = ()) -> float:
    """T1 (ms) whose signal ``contrast`` nulls (sign change of Mz at the k-space centre); ``inf`` if none.

    The null of the contrast's protocol under ``overrides`` (:func:`protocols`). T2 only scales these signals, so
    the null is searched at a fixed T2 of 100 ms.
    """
    protocol = protocols(overrides)[contrast]
    null = _null_location(lambda t1: float(physics.synthesize(contrast, t1, 100.0, 1.0, protocol)), T1_SEARCH_RANGE_MS)
    return np.inf if null is None else null


def signed_signal(
    contrast: str, t1_ms: np.ndarray, t2_ms: np.ndarray, pd: np.ndarray, overrides: ProtocolOverrides = ()
) -> np.ndarray:
    """Signed (real) signal of one compartment, in units where nominal white matter gives 1000 (default protocols).

    Args:
        contrast: one of :data:`CONTRASTS`.
        t1_ms, t2_ms, pd: broadcastable float32 arrays of the compartment's T1, T2 (ms) and PD.
        overrides: the study's protocol overrides (:func:`protocol_overrides`); the intensity scale stays the
            default protocols' (:func:`intensity_scale`).

    Returns:
        float32 array, negative where T1 is beyond the contrast's null (inverted magnetisation).
    """
    return signed_magnitude(contrast, t1_ms, t2_ms, pd, overrides=overrides) * np.float32(intensity_scale(contrast))


def signed_magnitude(
    contrast: str,
    t1_ms: np.ndarray,
    t2_ms: np.ndarray,
    pd: np.ndarray,
    protocol=None,
    overrides: ProtocolOverrides = (),
) -> np.ndarray:
    """The simplified model's magnitude (:func:`pipeline.physics.synthesize`), negative beyond the contrast's null T1.

    Args:
        contrast, t1_ms, t2_ms, pd, overrides: as :func:`signed_signal`.
        protocol: the contrast's protocol (default: ``protocols(overrides)[contrast]``, e.g. scaled by B1+); the
            null is that of ``protocols(overrides)[contrast]`` (:func:`null_t1_ms`).

    Returns:
        signal in M0 units (no intensity scale).
    """
    magnitude = physics.synthesize(contrast, t1_ms, t2_ms, pd, protocol or protocols(overrides)[contrast])
    return magnitude * np.where(t1_ms < null_t1_ms(contrast, overrides), np.float32(1.0), np.float32(-1.0))


@functools.cache
def intensity_scale(contrast: str) -> float:
    """Factor from signal (M0 units) to image intensity: nominal white matter → :data:`WHITE_MATTER_INTENSITY`.

    Defined by the *default* protocol (``protocols()[contrast]``) whatever a study's overrides, as a scanner's fixed
    receive gain: an overridden protocol changes image intensities by its own signal change (a longer TE: darker).
    """
    white = TISSUES_3T["white_matter"]
    return WHITE_MATTER_INTENSITY / float(
        physics.synthesize(contrast, white.t1_ms, white.t2_ms, white.pd, protocols()[contrast])
    )
