"""Signal models that turn T1/T2/M0 maps into MPRAGE, TSE and FLAIR weighted images.

Conventions (see ``docs/architecture.md``):

* Every function here takes T1 and T2 in **milliseconds** and M0 in arbitrary units. Inputs may be
  Python floats, numpy arrays or torch tensors of any broadcastable shapes; the result has the
  broadcast shape. Torch in gives torch out (differentiable, same device, floating dtype kept,
  integer tensors become ``torch.get_default_dtype()``); otherwise numpy out (float32 kept, anything
  else float64). Signals are magnitudes (>= 0).
* The network works in units of 3 s (the paper divides T1 and T2 by 3 s): a map value ``v`` means
  ``v * MAP_UNIT_MS`` ms. The network's raw outputs are made positive with a softplus in those units
  (``pipeline/engine.py``), so a freshly initialised network can hand this module T1/T2 close to 0 ms.
  To keep values and gradients finite there, T1 and T2 are clamped to at least
  ``RELAXATION_FLOOR_MS`` = 1 ms inside every model (the clamp has zero gradient below the floor).
  For T1, T2 in [1 ms, 10 s] and M0 >= 0 all values and gradients are finite.
* Protocol parameters live in frozen, serialisable dataclasses whose defaults are the paper's
  Table 1 (values the paper does not report carry documented assumptions). Invalid timing raises a
  ``ValueError`` naming the offending values when the protocol is built.

Models:

* :func:`mprage` -- steady-state MPRAGE (Deichmann et al. 2000, MRM 44:130; Wang et al. 2014,
  PLoS ONE 9:e96899), closed form by geometric series.
* :func:`tse` -- the paper's simplified turbo spin echo model (ideal 180 deg refocusing).
* :func:`flair` -- inversion-recovery TSE, simplified in the same way.
* :func:`tse_epg` -- the TSE centre echo from an extended phase graph CPMG train with the protocol's
  refocusing angle (Weigel 2015, JMRI 41:266).
* Whole trains, for acquisitions that place them across k-space (the phantom's realistic acquisition):
  :func:`mprage_readout` (every excitation of the MPRAGE readout), :func:`cpmg_echo_train` (EPG echo
  amplitudes for constant or variable refocusing angles), :func:`tse_echo_train`,
  :func:`inversion_recovery` and :func:`flair_echo_train`. The single-value models above are these
  trains' k-space-centre values, computed by the same code.
* :func:`tse_epg_tabulated` -- :func:`tse_epg` through a table of its echo amplitude over (T1, T2) that the same
  EPG code fills once per protocol: what the loss's ``tse_epg`` contrast uses (~300x faster with gradients).
* :func:`synthesize` / ``SIGNAL_MODELS`` -- look a model up by contrast name with one call signature.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.cache import cache_dir, cached_array

__all__ = [
    "MAP_UNIT_MS",
    "RELAXATION_FLOOR_MS",
    "SIGNAL_MODELS",
    "FLAIRProtocol",
    "MPRAGEProtocol",
    "SignalModel",
    "TSEProtocol",
    "centre_echo_index",
    "cpmg_echo_train",
    "flair",
    "flair_echo_train",
    "inversion_recovery",
    "mprage",
    "mprage_readout",
    "resolve_protocol",
    "synthesize",
    "tse",
    "tse_echo_train",
    "tse_epg",
]

MAP_UNIT_MS = 3000.0
"""Network map unit in ms: T1 and T2 are divided by 3 s inside the network, loss and metrics."""

RELAXATION_FLOOR_MS = 1.0
"""Smallest T1/T2 (ms) the models evaluate; smaller values are clamped to it."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class _Protocol:
    """Serialisation shared by the protocol dataclasses (all times in ms, angles in degrees)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain ``{field: value}`` dict (JSON/YAML friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> _Protocol:
        """Build from a mapping; missing fields keep their defaults, unknown fields are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown field(s) {unknown}; expected a subset of {sorted(known)}.")
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class MPRAGEProtocol(_Protocol):
    """MPRAGE timing (defaults: the paper's Table 1, 3T Siemens).

    Args:
        tr: inversion-to-inversion repetition time (ms).
        ti: time from the inversion to the excitation of the k-space centre (ms).
        te: echo time (ms); only used with ``t2star``.
        flip_angle: excitation flip angle (degrees), hard pulses.
        echo_spacing: time between excitations of the gradient-echo train (ms). Not in Table 1;
            7.0 ms is an assumed typical value.
        n_excitations: excitations (k-space lines) per inversion. Not in Table 1; 176 assumed, a
            typical 1 mm whole-brain MPRAGE partition count.
        inversion_efficiency: the inversion maps Mz to ``-inversion_efficiency * Mz`` (1 = perfect).
        t2star: optional T2* (ms) applied as ``exp(-te / t2star)``; ``None`` ignores T2* decay.
    """

    tr: float = 1900.0
    ti: float = 900.0
    te: float = 2.93
    flip_angle: float = 9.0
    echo_spacing: float = 7.0
    n_excitations: int = 176
    inversion_efficiency: float = 1.0
    t2star: float | None = None

    def __post_init__(self) -> None:
        _require(0.0 < self.flip_angle <= 180.0, f"flip_angle must be in (0, 180] degrees, got {self.flip_angle}.")
        _require(self.echo_spacing > 0.0, f"echo_spacing must be > 0 ms, got {self.echo_spacing}.")
        _require(
            int(self.n_excitations) == self.n_excitations and self.n_excitations >= 1,
            f"n_excitations must be a positive integer, got {self.n_excitations}.",
        )
        _require(
            0.0 <= self.inversion_efficiency <= 1.0,
            f"inversion_efficiency must be in [0, 1], got {self.inversion_efficiency}.",
        )
        _require(self.t2star is None or self.t2star > 0.0, f"t2star must be None or > 0 ms, got {self.t2star}.")
        _require(
            self.first_excitation_time >= 0.0,
            f"the excitation train starts before the inversion: ti - (n_excitations // 2) * echo_spacing = "
            f"{self.ti} - {self.n_excitations // 2} * {self.echo_spacing} = {self.first_excitation_time} ms < 0.",
        )
        _require(
            self.last_excitation_time <= self.tr,
            f"the excitation train does not fit in tr: ti + (n_excitations - 1 - n_excitations // 2) * "
            f"echo_spacing = {self.ti} + {self.n_excitations - 1 - self.n_excitations // 2} * {self.echo_spacing} "
            f"= {self.last_excitation_time} ms > tr = {self.tr} ms.",
        )

    @property
    def centre_index(self) -> int:
        """0-based index of the k-space-centre excitation (linear ordering)."""
        return int(self.n_excitations) // 2

    @property
    def first_excitation_time(self) -> float:
        """Time (ms) from the inversion to the first excitation."""
        return self.ti - self.centre_index * self.echo_spacing

    @property
    def last_excitation_time(self) -> float:
        """Time (ms) from the inversion to the last excitation."""
        return self.ti + (int(self.n_excitations) - 1 - self.centre_index) * self.echo_spacing


def _validate_echo_train(protocol: TSEProtocol | FLAIRProtocol, available_ms: float, available_name: str) -> None:
    """Checks shared by the spin-echo trains: positive timing, train inside ``available_ms``, TE inside the train."""
    name = type(protocol).__name__
    _require(protocol.echo_spacing > 0.0, f"{name}.echo_spacing must be > 0 ms, got {protocol.echo_spacing}.")
    _require(
        int(protocol.echo_train_length) == protocol.echo_train_length and protocol.echo_train_length >= 1,
        f"{name}.echo_train_length must be a positive integer, got {protocol.echo_train_length}.",
    )
    train = protocol.echo_train_length * protocol.echo_spacing
    _require(
        train <= available_ms,
        f"{name}: the echo train (echo_train_length * echo_spacing = {protocol.echo_train_length} * "
        f"{protocol.echo_spacing} = {train} ms) does not fit in {available_name} = {available_ms} ms.",
    )
    _require(
        0.0 < protocol.te <= train,
        f"{name}.te must be in (0, echo_train_length * echo_spacing = {train}] ms, got {protocol.te}.",
    )


def _validate_excitation(protocol: TSEProtocol | FLAIRProtocol) -> None:
    _require(
        0.0 < protocol.excitation_angle <= 180.0,
        f"{type(protocol).__name__}.excitation_angle must be in (0, 180] degrees, got {protocol.excitation_angle}.",
    )


@dataclasses.dataclass(frozen=True)
class TSEProtocol(_Protocol):
    """Turbo spin echo timing (defaults: the paper's Table 1 T2w TSE).

    Args:
        tr: repetition time (ms).
        te: effective echo time (ms), the echo that fills the k-space centre.
        echo_spacing: time between refocusing pulses/echoes (ms). Not in Table 1; 9.3 ms assumed so
            that ``te / echo_spacing`` = 10 is the centre echo.
        echo_train_length: echoes per excitation. Not in Table 1; 16 assumed.
        refocusing_angle: refocusing flip angle (degrees); only the EPG models (:func:`tse_epg`,
            :func:`tse_echo_train`) use it, :func:`tse` assumes ideal 180 deg pulses as in the paper.
        excitation_angle: excitation flip angle (degrees); the EPG models scale by its sine, :func:`tse`
            assumes 90 deg. Below 90 deg only with a transmit (B1+) field that scales every angle.
    """

    tr: float = 7010.0
    te: float = 93.0
    echo_spacing: float = 9.3
    echo_train_length: int = 16
    refocusing_angle: float = 150.0
    excitation_angle: float = 90.0

    def __post_init__(self) -> None:
        _require(
            0.0 < self.refocusing_angle <= 180.0,
            f"refocusing_angle must be in (0, 180] degrees, got {self.refocusing_angle}.",
        )
        _validate_excitation(self)
        _validate_echo_train(self, self.tr, "tr")


@dataclasses.dataclass(frozen=True)
class FLAIRProtocol(_Protocol):
    """Inversion-recovery TSE (FLAIR) timing (defaults: the paper's Table 1 T2w FLAIR).

    Args:
        tr: repetition time, inversion to inversion (ms).
        ti: inversion time, inversion to the 90 deg excitation (ms).
        te: echo time (ms). 352 ms is the *effective* (T2-contrast-equivalent) TE that the scanner
            reports for the paper's 3D SPACE sequence with variable refocusing flip angles; the
            simplified model uses it as a mono-exponential T2 weighting.
        echo_spacing: time between echoes (ms). Not in Table 1; 3.5 ms assumed (typical 3D SPACE).
        echo_train_length: echoes per excitation. Not in Table 1; 200 assumed (typical 3D SPACE).
        inversion_efficiency: the inversion maps Mz to ``-inversion_efficiency * Mz`` (1 = perfect).
        excitation_angle: excitation flip angle (degrees); only :func:`flair_echo_train` uses it.
    """

    tr: float = 4800.0
    ti: float = 1800.0
    te: float = 352.0
    echo_spacing: float = 3.5
    echo_train_length: int = 200
    inversion_efficiency: float = 1.0
    excitation_angle: float = 90.0

    def __post_init__(self) -> None:
        _require(self.ti > 0.0, f"FLAIRProtocol.ti must be > 0 ms, got {self.ti}.")
        _require(
            0.0 <= self.inversion_efficiency <= 1.0,
            f"FLAIRProtocol.inversion_efficiency must be in [0, 1], got {self.inversion_efficiency}.",
        )
        _validate_excitation(self)
        _validate_echo_train(self, self.tr - self.ti, f"tr - ti ({self.tr} - {self.ti})")


# --------------------------------------------------------------------------------------------------
# numpy / torch plumbing: every model computes in torch and converts back for numpy callers.


def _as_tensors(*values: Any) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], Any]]:
    """Convert floats/arrays/tensors to one floating torch dtype and device.

    Returns the tensors and the function that converts a result back to the caller's kind
    (torch stays torch; otherwise a numpy array, or numpy scalar for 0-d results).
    """
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if tensors:
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = floating[0] if floating else torch.get_default_dtype()
        for other in floating[1:]:
            dtype = torch.promote_types(dtype, other)
        device = tensors[0].device
        converted = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
        return converted, lambda result: result
    array_dtypes = [np.asarray(v).dtype for v in values if isinstance(v, (np.ndarray, np.generic))]
    keep_single = bool(array_dtypes) and all(dtype == np.float32 for dtype in array_dtypes)
    dtype = torch.float32 if keep_single else torch.float64
    converted = [torch.as_tensor(np.asarray(v), dtype=dtype) for v in values]
    return converted, lambda result: result.numpy()[()]


def _relaxation_ms(value: torch.Tensor) -> torch.Tensor:
    """Clamp a T1/T2 map (ms) to ``RELAXATION_FLOOR_MS``."""
    return value.clamp_min(RELAXATION_FLOOR_MS)


# --------------------------------------------------------------------------------------------------
# MPRAGE


def mprage(t1: Any, m0: Any, protocol: MPRAGEProtocol | None = None) -> Any:
    """Steady-state MPRAGE magnitude signal at the k-space-centre excitation.

    Sequence (Deichmann et al. 2000, MRM 44:130; Wang et al. 2014, PLoS ONE 9:e96899): an inversion
    at t = 0 (``Mz -> -eta * Mz``), then N hard-pulse excitations of flip angle ``alpha`` at
    ``t_k = TI + (k - c) * ESP`` (k = 0..N-1, c = N // 2, linear ordering), ideal spoiling, next
    inversion at t = TR. With ``m = Mz / M0`` and ``E(t) = exp(-t / T1)``:

    * between excitations (just before excitation k -> k+1): ``m_{k+1} = a m_k + (1 - E1)`` with
      ``E1 = E(ESP)``, ``a = cos(alpha) E1``; its fixed point is ``m_inf = (1 - E1) / (1 - a)``, so the
      geometric series gives ``m_k = m_inf + a^k (m_0 - m_inf)``;
    * inversion and recovery to the first excitation: ``m_0 = 1 - E_A - eta E_A m_ss`` with
      ``E_A = E(t_0)``, ``m_ss`` = Mz/M0 just before the inversion;
    * after the last excitation, recovery to the next inversion:
      ``m_ss = 1 - E_D + E_D cos(alpha) m_{N-1}`` with ``E_D = E(TR - t_{N-1})``.

    Steady state (``m_ss`` equal in consecutive TRs) solves these linear equations:

    ``m_ss = [1 - E_D + E_D cos(alpha) (m_inf (1 - a^{N-1}) + a^{N-1} (1 - E_A))]
    / (1 + eta E_D E_A cos(alpha) a^{N-1})``

    and the signal is ``M0 sin(alpha) |m_c|`` (times ``exp(-TE / T2*)`` if ``protocol.t2star`` is set).

    Args:
        t1: T1 in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: proton density / equilibrium magnetisation, arbitrary units.
        protocol: sequence timing; ``None`` uses the paper's (``MPRAGEProtocol()``).

    Returns:
        magnitude signal, broadcast shape of ``t1`` and ``m0``, same units as ``m0``.
    """
    protocol = protocol or MPRAGEProtocol()
    (t1, m0), to_output = _as_tensors(t1, m0)
    m_inf, a, m_first = _mprage_recovery(_relaxation_ms(t1), protocol)
    m_centre = m_inf + a**protocol.centre_index * (m_first - m_inf)
    return to_output(_mprage_transverse(m0, m_centre.abs(), protocol))


def _mprage_recovery(t1: torch.Tensor, protocol: MPRAGEProtocol) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steady-state ``(m_inf, a, m_0)`` of :func:`mprage`'s recursion ``m_k = m_inf + a^k (m_0 - m_inf)``."""
    alpha = math.radians(protocol.flip_angle)
    cos_alpha = math.cos(alpha)
    n = int(protocol.n_excitations)

    one_minus_e1 = -torch.expm1(-protocol.echo_spacing / t1)
    a = cos_alpha * (1.0 - one_minus_e1)
    m_inf = one_minus_e1 / (1.0 - a)
    e_a = torch.exp(-protocol.first_excitation_time / t1)
    e_d = torch.exp(-(protocol.tr - protocol.last_excitation_time) / t1)
    a_last = a ** (n - 1)
    eta = protocol.inversion_efficiency

    m_ss = (1.0 - e_d + e_d * cos_alpha * (m_inf * (1.0 - a_last) + a_last * (1.0 - e_a))) / (
        1.0 + eta * e_d * e_a * cos_alpha * a_last
    )
    return m_inf, a, 1.0 - e_a - eta * e_a * m_ss


def _mprage_transverse(m0: torch.Tensor, mz: torch.Tensor, protocol: MPRAGEProtocol) -> torch.Tensor:
    """Transverse signal ``M0 sin(alpha) m_k`` (times ``exp(-TE / T2*)`` with ``protocol.t2star``) of Mz/M0 ``m_k``."""
    signal = m0 * math.sin(math.radians(protocol.flip_angle)) * mz
    if protocol.t2star is not None:
        signal = signal * math.exp(-protocol.te / protocol.t2star)
    return signal


def mprage_readout(t1: Any, m0: Any, protocol: MPRAGEProtocol | None = None) -> Any:
    """Signed MPRAGE signal of every excitation of the steady-state readout train.

    The same recursion as :func:`mprage` (Deichmann et al. 2000), kept for all excitations:
    ``S_k = M0 sin(alpha) (m_inf + a^k (m_0 - m_inf))`` for ``k = 0 .. N-1``. Excitation ``k`` fills one
    k-space line of the inner phase-encode loop, so ``S_k / S_c`` is the readout's k-space modulation
    (its point-spread function); ``|S_c|`` (``c = N // 2``) is :func:`mprage`. The sign is that of
    Mz: negative while a long-T1 tissue is still inverted.

    Args:
        t1: T1 in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: arbitrary units.
        protocol: ``None`` uses ``MPRAGEProtocol()``.

    Returns:
        (..., N) signals, ``...`` the broadcast shape of ``t1`` and ``m0``.
    """
    protocol = protocol or MPRAGEProtocol()
    (t1, m0), to_output = _as_tensors(t1, m0)
    m_inf, a, m_first = _mprage_recovery(_relaxation_ms(t1), protocol)
    k = torch.arange(int(protocol.n_excitations), dtype=t1.dtype, device=t1.device)
    m_k = m_inf.unsqueeze(-1) + a.unsqueeze(-1) ** k * (m_first - m_inf).unsqueeze(-1)
    return to_output(_mprage_transverse(m0.unsqueeze(-1), m_k, protocol))


# --------------------------------------------------------------------------------------------------
# Spin-echo trains


def _saturation_recovery(t1: torch.Tensor, recovery_ms: float) -> torch.Tensor:
    """``1 - exp(-recovery_ms / T1)``: Mz/M0 regrown from Mz = 0 over ``recovery_ms``."""
    return -torch.expm1(-recovery_ms / t1)


def tse(t1: Any, t2: Any, m0: Any, protocol: TSEProtocol | None = None) -> Any:
    """The paper's simplified TSE signal (ideal 180 deg refocusing, Mz = 0 after each echo train).

    ``S = M0 (1 - exp(-(TR - ETL ESP) / T1)) exp(-TE / T2)``: Mz regrows from 0 during the dead time
    after the echo train (Couturier-style multi-echo recovery, paper ref. 10), the k-space-centre echo
    at TE decays mono-exponentially. ``protocol.refocusing_angle`` is ignored (see :func:`tse_epg`).

    Args:
        t1, t2: relaxation times in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: arbitrary units.
        protocol: ``None`` uses ``TSEProtocol()`` (the paper's Table 1).

    Returns:
        magnitude signal with the broadcast shape of the inputs.
    """
    protocol = protocol or TSEProtocol()
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    t1, t2 = _relaxation_ms(t1), _relaxation_ms(t2)
    dead_time = protocol.tr - protocol.echo_train_length * protocol.echo_spacing
    return to_output(m0 * _saturation_recovery(t1, dead_time) * torch.exp(-protocol.te / t2))


def flair(t1: Any, t2: Any, m0: Any, protocol: FLAIRProtocol | None = None) -> Any:
    """Simplified inversion-recovery TSE (FLAIR) magnitude signal.

    Assumptions (same simplifications as :func:`tse`): perfect inversion and 90 deg excitation,
    Mz = 0 at the end of the echo train (train length ``ETL ESP`` starting at TI), mono-exponential T2
    decay to the (effective) TE. Mz regrows from 0 for ``TR - TI - ETL ESP``, is inverted and
    recovers for TI:

    ``S = M0 |1 - 2 exp(-TI / T1) + exp(-(TR - ETL ESP) / T1)| exp(-TE / T2)``.

    A tissue is nulled where ``2 exp(-TI/T1) = 1 + exp(-(TR - ETL ESP)/T1)``, i.e. T1 = TI / ln 2 for
    TR -> infinity. With the paper's TE = 352 ms as a mono-exponential weighting, long-T2 fluid keeps
    more signal than a 3D SPACE FLAIR with variable flip angles would (the paper leaves FLAIR out of
    the self-supervised loss for this modelling difficulty).

    Args:
        t1, t2: relaxation times in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: arbitrary units.
        protocol: ``None`` uses ``FLAIRProtocol()``.

    Returns:
        magnitude signal with the broadcast shape of the inputs.
    """
    protocol = protocol or FLAIRProtocol()
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    t1, t2 = _relaxation_ms(t1), _relaxation_ms(t2)
    return to_output(m0 * _inversion_recovery(t1, protocol).abs() * torch.exp(-protocol.te / t2))


def _inversion_recovery(t1: torch.Tensor, protocol: FLAIRProtocol) -> torch.Tensor:
    """Signed Mz/M0 at TI (see :func:`inversion_recovery`) of clamped T1 (ms)."""
    # 1 - (1 + eta (1 - E(TR - TI - train))) E(TI), expanded (for eta = 1 the operations of the original formula)
    train = protocol.echo_train_length * protocol.echo_spacing
    eta = protocol.inversion_efficiency
    return 1.0 - (1.0 + eta) * torch.exp(-protocol.ti / t1) + eta * torch.exp(-(protocol.tr - train) / t1)


def inversion_recovery(t1: Any, protocol: FLAIRProtocol | None = None) -> Any:
    """Signed Mz/M0 of a FLAIR at the excitation, TI after the inversion.

    Mz regrows from 0 (end of the previous echo train) for ``TR - TI - ETL ESP``, is inverted to
    ``-eta`` times itself (``protocol.inversion_efficiency``) and recovers for TI:
    ``Mz/M0 = 1 - (1 + eta (1 - exp(-(TR - TI - ETL ESP) / T1))) exp(-TI / T1)``; for eta = 1 this is
    :func:`flair`'s ``1 - 2 exp(-TI/T1) + exp(-(TR - ETL ESP)/T1)``. Negative for a T1 beyond the null.

    Args:
        t1: T1 in ms (clamped to ``RELAXATION_FLOOR_MS``).
        protocol: ``None`` uses ``FLAIRProtocol()``.

    Returns:
        Mz/M0 with the shape of ``t1``.
    """
    (t1,), to_output = _as_tensors(t1)
    return to_output(_inversion_recovery(_relaxation_ms(t1), protocol or FLAIRProtocol()))


def centre_echo_index(protocol: TSEProtocol) -> int:
    """1-based echo number of the k-space centre, ``TE / ESP``, which must be an integer <= ETL."""
    ratio = protocol.te / protocol.echo_spacing
    echo = round(ratio)
    _require(
        abs(ratio - echo) <= 1e-6 * max(ratio, 1.0) and 1 <= echo <= protocol.echo_train_length,
        f"tse_epg needs te to be a whole number of echo spacings within the train; got te / echo_spacing = "
        f"{protocol.te} / {protocol.echo_spacing} = {ratio} with echo_train_length {protocol.echo_train_length}.",
    )
    return echo


def _cpmg_echo_train(t1: torch.Tensor, t2: torch.Tensor, refocusing_deg: Sequence[float], echo_spacing: float):
    """(..., n) normalised amplitudes of the echoes of a CPMG train started from Mz = M0.

    Extended phase graph (Weigel 2015, JMRI 41:266): 90 deg excitation about y, refocusing about x at
    ESP/2 + k ESP (angle ``refocusing_deg[k]``), echoes at k ESP, relaxation and one dephasing step per
    ESP/2. In this CPMG phase convention the states that refocus at the echoes are real ``F+_k``,
    ``F-_k`` and imaginary ``Z_k = i z_k``, so the graph runs in real arithmetic. Longitudinal regrowth
    ``(1 - E1)`` and the Mz an imperfect excitation leaves feed the quadrature subsystem (real Z_0),
    which is tipped at refocusing times and only refocuses at refocusing times, never at echo times,
    so it is omitted without changing the echo amplitudes.
    """
    shape = (*torch.broadcast_shapes(t1.shape, t2.shape), 2)
    e1 = torch.exp(-0.5 * echo_spacing / t1).unsqueeze(-1)
    e2 = torch.exp(-0.5 * echo_spacing / t2).unsqueeze(-1)
    unit = torch.zeros(2, dtype=t1.dtype, device=t1.device)
    unit[0] = 1.0
    f_plus = unit.expand(shape)
    f_minus = unit.expand(shape)
    z = torch.zeros(shape, dtype=t1.dtype, device=t1.device)

    def relax_and_dephase(f_plus, f_minus, z):
        # dephasing raises the order of every state by one: the graph grows by one state per half echo spacing
        f_plus, f_minus, z = f_plus * e2, f_minus * e2, z * e1
        zero = torch.zeros_like(f_minus[..., :1])
        f_plus = torch.cat([f_minus[..., 1:2], f_plus], dim=-1)
        f_minus = torch.cat([f_minus[..., 1:], zero, zero], dim=-1)
        z = torch.cat([z, zero], dim=-1)
        return f_plus, f_minus, z

    echoes = []
    for angle in refocusing_deg:
        beta = math.radians(angle)
        cos_half_sq, sin_half_sq = math.cos(beta / 2) ** 2, math.sin(beta / 2) ** 2
        sin_beta, cos_beta = math.sin(beta), math.cos(beta)
        f_plus, f_minus, z = relax_and_dephase(f_plus, f_minus, z)
        f_plus, f_minus, z = (
            cos_half_sq * f_plus + sin_half_sq * f_minus + sin_beta * z,
            sin_half_sq * f_plus + cos_half_sq * f_minus - sin_beta * z,
            0.5 * sin_beta * (f_minus - f_plus) + cos_beta * z,
        )
        f_plus, f_minus, z = relax_and_dephase(f_plus, f_minus, z)
        echoes.append(f_plus[..., 0])
    return torch.stack(echoes, dim=-1)


def cpmg_echo_train(t1: Any, t2: Any, refocusing_deg: Sequence[float], echo_spacing: float) -> Any:
    """Echo amplitudes of a CPMG train with the given refocusing angles, by extended phase graphs.

    The train starts from transverse magnetisation M0 (a 90 deg excitation of Mz = M0); echo ``k``
    (1-based) forms at ``k * echo_spacing`` after refocusing pulse ``k`` of angle ``refocusing_deg[k-1]``
    (Weigel 2015, JMRI 41:266). Constant 180 deg gives ``exp(-k ESP / T2)``; lower or variable angles
    (3D SPACE: Mugler 2014, JMRI 39:745) add stimulated-echo pathways that slow the decay.

    Args:
        t1, t2: relaxation times in ms (clamped to ``RELAXATION_FLOOR_MS``).
        refocusing_deg: refocusing flip angle of every echo (degrees, in (0, 180]); its length is the train length.
        echo_spacing: time between echoes (ms).

    Returns:
        (..., n_echoes) amplitudes relative to M0 (signed; positive for CPMG), ``...`` the broadcast shape.
    """
    _require(len(refocusing_deg) >= 1, "cpmg_echo_train needs at least one refocusing angle.")
    _require(
        all(0.0 < angle <= 180.0 for angle in refocusing_deg),
        f"refocusing angles must be in (0, 180] degrees, got {list(refocusing_deg)}.",
    )
    _require(echo_spacing > 0.0, f"echo_spacing must be > 0 ms, got {echo_spacing}.")
    (t1, t2), to_output = _as_tensors(t1, t2)
    return to_output(_cpmg_echo_train(_relaxation_ms(t1), _relaxation_ms(t2), refocusing_deg, echo_spacing))


def tse_echo_train(t1: Any, t2: Any, m0: Any, protocol: TSEProtocol | None = None) -> Any:
    """Signal of every echo of the TSE train: :func:`tse_epg` for all ``ETL`` echoes.

    ``S_k = M0 sin(excitation) (1 - exp(-(TR - ETL ESP) / T1)) A_k(T1, T2, beta, ESP)``, ``A_k`` from
    :func:`cpmg_echo_train` with the constant refocusing angle ``beta``. Echo ``k`` fills the k-space lines
    of its segment, so ``S_k / S_{TE/ESP}`` is the echo train's k-space modulation.

    Returns:
        (..., ETL) signals, ``...`` the broadcast shape of the inputs.
    """
    protocol = protocol or TSEProtocol()
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    return to_output(_tse_echo_train(t1, t2, m0, protocol, protocol.echo_train_length))


def _tse_echo_train(t1, t2, m0, protocol: TSEProtocol, n_echoes: int) -> torch.Tensor:
    """The first ``n_echoes`` echoes of :func:`tse_echo_train` (tensors in, tensor out)."""
    t1, t2 = _relaxation_ms(t1), _relaxation_ms(t2)
    amplitudes = _cpmg_echo_train(t1, t2, [protocol.refocusing_angle] * n_echoes, protocol.echo_spacing)
    return _tse_scale(t1, m0, protocol).unsqueeze(-1) * amplitudes


def _tse_scale(t1: torch.Tensor, m0: torch.Tensor, protocol: TSEProtocol) -> torch.Tensor:
    """``M0 sin(excitation) (1 - exp(-(TR - ETL ESP) / T1))``: what multiplies the echo amplitudes (T1 in ms)."""
    dead_time = protocol.tr - protocol.echo_train_length * protocol.echo_spacing
    return m0 * math.sin(math.radians(protocol.excitation_angle)) * _saturation_recovery(_relaxation_ms(t1), dead_time)


def tse_epg(t1: Any, t2: Any, m0: Any, protocol: TSEProtocol | None = None) -> Any:
    """TSE centre-echo signal with the protocol's refocusing angle, by extended phase graphs.

    ``S = M0 sin(excitation) (1 - exp(-(TR - ETL ESP) / T1)) A_n(T1, T2, beta, ESP)`` where ``A_n`` is the
    amplitude of echo ``n = TE / ESP`` of a CPMG train (refocusing angle ``beta``) started from Mz = M0
    (Weigel 2015, JMRI 41:266). This is :func:`tse` with ``exp(-TE/T2)`` replaced by the EPG echo
    amplitude, which includes stimulated-echo pathways: for ``beta`` = 180 deg (and a 90 deg
    excitation) ``A_n = exp(-TE/T2)`` and the two models agree exactly. The saturation-recovery factor
    keeps :func:`tse`'s assumption Mz = 0 after each train (with ``beta`` < 180 deg some Mz survives;
    this is neglected).

    Args:
        t1, t2: relaxation times in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: arbitrary units.
        protocol: ``None`` uses ``TSEProtocol()``; ``te`` must be a whole number of echo spacings.

    Returns:
        magnitude signal with the broadcast shape of the inputs (torch-differentiable).
    """
    protocol = protocol or TSEProtocol()
    echo = centre_echo_index(protocol)
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    return to_output(_tse_echo_train(t1, t2, m0, protocol, echo)[..., echo - 1].abs())


EPG_TABLE_RANGE_MS = (RELAXATION_FLOOR_MS, 30000.0)
"""T1 and T2 range (ms) of :func:`tse_epg_tabulated`'s table; values outside take the nearest edge's amplitude."""

EPG_TABLE_SIZE = (128, 1024)
"""Table points (T1, T2), log-spaced over ``EPG_TABLE_RANGE_MS``."""


EPG_TABLE_VERSION = 1
"""Part of the on-disk key of a table: raise it when the EPG code changes what a table holds."""


@functools.lru_cache(maxsize=16)
def _centre_echo_table(protocol: TSEProtocol) -> torch.Tensor:
    """(1, 1, n_T1, n_T2) float64 centre-echo amplitudes ``A_n`` of :func:`cpmg_echo_train` on the log grid, filled
    once per protocol and kept on disk (``$QMAP_HYBRID_CACHE/epg_tables``, :mod:`pipeline.cache`): filling takes a few
    seconds, which every training, inference and QC process would otherwise pay."""
    key = json.dumps([EPG_TABLE_VERSION, EPG_TABLE_SIZE, EPG_TABLE_RANGE_MS, dataclasses.asdict(protocol)])
    path = cache_dir("epg_tables") / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
    return torch.from_numpy(cached_array(path, lambda: _fill_centre_echo_table(protocol), EPG_TABLE_SIZE))[None, None]


def _fill_centre_echo_table(protocol: TSEProtocol) -> np.ndarray:
    """(n_T1, n_T2) float64 centre-echo amplitudes of :func:`cpmg_echo_train` on the log grid of the table."""
    log_range = [math.log(value) for value in EPG_TABLE_RANGE_MS]
    t1 = torch.linspace(*log_range, EPG_TABLE_SIZE[0], dtype=torch.float64).exp()
    t2 = torch.linspace(*log_range, EPG_TABLE_SIZE[1], dtype=torch.float64).exp()
    echo = centre_echo_index(protocol)
    amplitudes = _cpmg_echo_train(t1[:, None], t2[None, :], [protocol.refocusing_angle] * echo, protocol.echo_spacing)
    return amplitudes[..., echo - 1].abs().numpy()


def tse_epg_tabulated(t1: Any, t2: Any, m0: Any, protocol: TSEProtocol | None = None) -> Any:
    """:func:`tse_epg` with the echo amplitude ``A_n(T1, T2)`` interpolated from a table.

    The table holds :func:`cpmg_echo_train`'s centre-echo amplitude on a log-spaced grid (``EPG_TABLE_SIZE``
    over ``EPG_TABLE_RANGE_MS``), computed once per protocol; ``torch.nn.functional.grid_sample`` interpolates it
    bilinearly in (log T1, log T2), so the signal is differentiable (piecewise-linear in log T). The relative
    difference to :func:`tse_epg` is below 5e-4 (its gradients' median, 0.5 %) for T1 in [200, 6000] ms and T2 in [20, 3000] ms (tested); a
    training step is ~300x faster than through the EPG recursion (which runs every pixel's phase graph with
    autograd). The saturation-recovery factor and ``M0 sin(excitation)`` are computed exactly, as in
    :func:`tse_epg`.
    """
    protocol = protocol or TSEProtocol()
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    shape = torch.broadcast_shapes(t1.shape, t2.shape, m0.shape)
    low, high = (math.log(value) for value in EPG_TABLE_RANGE_MS)

    def table_coordinate(value):  # log value mapped onto [-1, 1], grid_sample's align_corners=True range
        return (value.expand(shape).clamp(*EPG_TABLE_RANGE_MS).log() - low) / (high - low) * 2.0 - 1.0

    grid = torch.stack([table_coordinate(t2), table_coordinate(t1)], dim=-1).reshape(1, -1, 1, 2)
    table = _centre_echo_table(protocol).to(dtype=grid.dtype, device=grid.device)
    amplitude = F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True).reshape(shape)
    return to_output(_tse_scale(t1, m0, protocol) * amplitude)


def flair_echo_train(t1: Any, t2: Any, m0: Any, refocusing_deg: Sequence[float], protocol: FLAIRProtocol | None = None):
    """Signed signal of every echo of an inversion-recovery echo train (3D FLAIR, e.g. SPACE).

    ``S_k = M0 Mz_TI sin(excitation) A_k``: :func:`inversion_recovery`'s signed Mz/M0 at TI, excited and
    refocused by the train ``refocusing_deg`` (:func:`cpmg_echo_train`, which is linear in the
    magnetisation it starts from). Keeps :func:`flair`'s assumption Mz = 0 after each train.

    Args:
        t1, t2: relaxation times in ms; m0: arbitrary units.
        refocusing_deg: refocusing angle of each echo (degrees): at most ``protocol.echo_train_length``, the
            first echoes of the train.
        protocol: ``None`` uses ``FLAIRProtocol()``.

    Returns:
        (..., len(refocusing_deg)) signals, negative where Mz was still inverted at TI.
    """
    protocol = protocol or FLAIRProtocol()
    _require(
        len(refocusing_deg) <= protocol.echo_train_length,
        f"flair_echo_train takes at most echo_train_length = {protocol.echo_train_length} refocusing angles, "
        f"got {len(refocusing_deg)}.",
    )
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    t1, t2 = _relaxation_ms(t1), _relaxation_ms(t2)
    amplitudes = _cpmg_echo_train(t1, t2, refocusing_deg, protocol.echo_spacing)
    scale = m0 * math.sin(math.radians(protocol.excitation_angle)) * _inversion_recovery(t1, protocol)
    return to_output(scale.unsqueeze(-1) * amplitudes)


# --------------------------------------------------------------------------------------------------
# Registry


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
