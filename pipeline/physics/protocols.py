"""Protocol dataclasses of the three acquisitions (times in ms, angles in degrees; defaults: the paper's Table 1),
serialisable, validated when built."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


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
