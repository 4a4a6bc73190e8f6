"""The contrast registry: each signal model by contrast name with one call signature (``SIGNAL_MODELS``,
:func:`synthesize`), and protocols from dicts (:func:`resolve_protocol`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from pipeline.physics.units import _as_tensors
from pipeline.physics.protocols import FLAIRProtocol, MPRAGEProtocol, TSEProtocol, _Protocol
from pipeline.physics.mprage_signal import mprage
from pipeline.physics.spin_echo import tse, tse_epg_tabulated
from pipeline.physics.flair_signal import flair


class SignalModel(NamedTuple):
    """A contrast's protocol type and its signal as ``signal(t1_ms, t2_ms, m0, protocol)``."""

    protocol_type: type[_Protocol]
    signal: Callable[[Any, Any, Any, Any], Any]


def _mprage_signal(t1: Any, t2: Any, m0: Any, protocol: MPRAGEProtocol | None) -> Any:
    """:func:`mprage` in the registry's uniform signature.

    T2 does not enter the model; it only takes part in broadcasting, so that every registered model
    returns the broadcast shape of ``(t1, t2, m0)``.
    """
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    signal = mprage(t1, m0, protocol)
    return to_output(signal.expand(torch.broadcast_shapes(signal.shape, t2.shape)).contiguous())


SIGNAL_MODELS: dict[str, SignalModel] = {
    "mprage": SignalModel(MPRAGEProtocol, _mprage_signal),
    "tse": SignalModel(TSEProtocol, tse),
    "flair": SignalModel(FLAIRProtocol, flair),
    "tse_epg": SignalModel(TSEProtocol, tse_epg_tabulated),
}
"""Contrast name -> :class:`SignalModel`; the names match the hybrid loss's ``contrasts`` (``tse_epg``: the T2w
TSE image through :func:`tse_epg` -- tabulated, :func:`tse_epg_tabulated` -- an alternative to the paper's ``tse``
model for the same channel)."""


def _signal_model(contrast: str) -> SignalModel:
    if contrast not in SIGNAL_MODELS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {sorted(SIGNAL_MODELS)}.")
    return SIGNAL_MODELS[contrast]


def resolve_protocol(contrast: str, protocol: _Protocol | Mapping[str, Any] | None = None) -> _Protocol:
    """The protocol dataclass for ``contrast`` from ``None`` (defaults), a dict, or an instance."""
    protocol_type = _signal_model(contrast).protocol_type
    if protocol is None:
        return protocol_type()
    if isinstance(protocol, protocol_type):
        return protocol
    if isinstance(protocol, Mapping):
        return protocol_type.from_dict(protocol)
    raise TypeError(
        f"protocol for {contrast!r} must be None, a dict or a {protocol_type.__name__}, got {type(protocol).__name__}."
    )


def synthesize(contrast: str, t1: Any, t2: Any, m0: Any, protocol: _Protocol | Mapping[str, Any] | None = None) -> Any:
    """Weighted image of ``contrast`` ("mprage", "tse" or "flair") from T1/T2 (ms) and M0.

    ``protocol`` may be ``None`` (paper defaults), a dict of fields, or the contrast's protocol
    dataclass. Shapes, dtypes and array kinds follow the individual models.
    """
    model = _signal_model(contrast)
    return model.signal(t1, t2, m0, resolve_protocol(contrast, protocol))
