"""Acquisition protocols from BIDS sidecars, and their merge with the protocols a bundle config sets.

BIDS sidecar fields are in seconds and degrees (BIDS specification, "Magnetic Resonance Imaging > Common metadata
fields > Timing parameters" and "RF & Contrast"; "Magnetic Resonance Imaging > Anatomy imaging data" adds
``RepetitionTimeExcitation`` and ``RepetitionTimePreparation`` for anatomical images; the quantitative MRI appendix
defines ``NumberShots``). The
protocol dataclasses of :mod:`pipeline.physics` are in ms and degrees. The fields read (only those present are used;
the rest keep the dataclasses' defaults, the paper's Table 1):

* T1w MPRAGE: ``tr`` ← ``RepetitionTimePreparation`` (inversion to inversion), else ``RepetitionTime``; ``ti`` ←
  ``InversionTime``; ``te`` ← ``EchoTime``; ``flip_angle`` ← ``FlipAngle`` (degrees); ``echo_spacing`` ←
  ``RepetitionTimeExcitation`` (the interval between two excitations); ``n_excitations`` ← ``NumberShots``
  (excitations per inversion, a count);
* T2w TSE: ``tr`` ← ``RepetitionTimeExcitation``, else ``RepetitionTime``; ``te`` ← ``EchoTime`` (the effective TE,
  the k-space-centre echo); ``echo_train_length`` ← ``EchoTrainLength`` (a count);
* FLAIR: ``tr`` ← ``RepetitionTimePreparation``, else ``RepetitionTime``; ``ti`` ← ``InversionTime``; ``te`` ←
  ``EchoTime``; ``echo_train_length`` ← ``EchoTrainLength``.

Times are converted from s to ms (rounded to 1e-6 ms), angles stay in degrees.

``EchoTrainLength`` is not a BIDS schema field but the key dcm2niix writes. Not read, because BIDS has no field for
them: the TSE/FLAIR echo spacing (``EffectiveEchoSpacing`` is the EPI phase-encode line interval, another quantity,
and ``EchoTime`` is the effective TE, whose ratio to the echo spacing depends on the k-space ordering, so the spacing
is not defined by it) and the TSE refocusing angle (there is no ``RefocusingFlipAngle``; a spin-echo image's
``FlipAngle`` holds the excitation on some vendors and the refocusing pulse on others). They keep the defaults (TSE:
9.3 ms, 150 degrees; FLAIR: 3.5 ms) unless a bundle config sets them (:func:`resolve_protocols`). The MPRAGE's
``RepetitionTimeExcitation`` is exactly :class:`~pipeline.physics.MPRAGEProtocol`'s ``echo_spacing`` ("time between
excitations of the gradient-echo train").

A manifest carries one protocol per contrast for the whole dataset (the ``"protocols"`` record, keyed ``mprage``,
``tse``, ``flair`` like :func:`pipeline.phantom.generate_study`'s ``protocols``): sessions whose sidecars disagree
beyond :data:`DEFAULT_RTOL` raise :class:`~pipeline.data.errors.InvalidInputError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pipeline import physics
from pipeline.data.errors import InvalidInputError
from pipeline.data.manifest import read_manifest

MS_PER_S = 1000.0
DEFAULT_RTOL = 0.01
"""Relative tolerance within which two values of one protocol field agree (1 %: sidecar values rounded to three
significant digits differ by up to ~0.5 %)."""

WEIGHTED_CONTRASTS = {"t1w": "mprage", "t2w": "tse", "flair": "flair"}
"""Manifest image key → the contrast (protocol) of that weighted image."""
SUFFIXES = {"mprage": "T1w", "tse": "T2w", "flair": "FLAIR"}
"""Contrast → BIDS suffix of its weighted image."""
LOSS_CONTRAST_SOURCES = {"mprage": "mprage", "tse": "tse", "tse_epg": "tse", "flair": "flair"}
"""Contrast names of the loss and QC (``pipeline.physics.SIGNAL_MODELS``) → the weighted image whose protocol they
use: both TSE models (``tse``, the paper's simplified one, and ``tse_epg``) take the T2w TSE protocol."""


class SidecarField(NamedTuple):
    """One protocol field read from a sidecar: the first of ``keys`` present, converted by ``kind``.

    ``kind``: ``"time"`` (s → ms), ``"angle"`` (degrees, kept) or ``"count"`` (a whole number).
    """

    field: str
    keys: tuple[str, ...]
    kind: str


SIDECAR_FIELDS: dict[str, tuple[SidecarField, ...]] = {
    "mprage": (
        SidecarField("tr", ("RepetitionTimePreparation", "RepetitionTime"), "time"),
        SidecarField("ti", ("InversionTime",), "time"),
        SidecarField("te", ("EchoTime",), "time"),
        SidecarField("flip_angle", ("FlipAngle",), "angle"),
        SidecarField("echo_spacing", ("RepetitionTimeExcitation",), "time"),
        SidecarField("n_excitations", ("NumberShots",), "count"),
    ),
    "tse": (
        SidecarField("tr", ("RepetitionTimeExcitation", "RepetitionTime"), "time"),
        SidecarField("te", ("EchoTime",), "time"),
        SidecarField("echo_train_length", ("EchoTrainLength",), "count"),
    ),
    "flair": (
        SidecarField("tr", ("RepetitionTimePreparation", "RepetitionTime"), "time"),
        SidecarField("ti", ("InversionTime",), "time"),
        SidecarField("te", ("EchoTime",), "time"),
        SidecarField("echo_train_length", ("EchoTrainLength",), "count"),
    ),
}
"""The sidecar fields read per contrast (the table of the module docstring)."""


class SidecarProtocol(NamedTuple):
    """The protocol fields one session's sidecar gives for one contrast.

    Attributes:
        session: the manifest entry's ``subject`` (``sub-X`` or ``sub-X_ses-Y``).
        contrast: ``mprage``, ``tse`` or ``flair``.
        source: the sidecar (or the image whose inherited sidecars were read), for messages.
        fields: ``{protocol field: value}`` in ms / degrees / counts.
    """

    session: str
    contrast: str
    source: str
    fields: dict[str, float | int]


def _converted(value: Any, kind: str, key: str, source: str) -> float | int:
    """A sidecar value in the protocol's units; :class:`InvalidInputError` naming ``source`` and ``key`` if unusable."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(
            f"{source}: {key} = {value!r} is not a positive number"
            + (" (arrays, e.g. multi-echo or per-volume values, are not supported)" if isinstance(value, list) else "")
        )
    if kind == "time":
        return round(float(value) * MS_PER_S, 6)
    if kind == "count":
        if not float(value).is_integer():
            raise InvalidInputError(f"{source}: {key} = {value!r} is not a whole number")
        return int(value)
    return float(value)


def sidecar_protocol(contrast: str, metadata: Mapping[str, Any], source: str = "sidecar") -> dict[str, float | int]:
    """The protocol overrides (ms, degrees) that one image's sidecar metadata gives (:data:`SIDECAR_FIELDS`).

    Args:
        contrast: ``mprage`` (T1w), ``tse`` (T2w) or ``flair``.
        metadata: the image's sidecar JSON (with the BIDS inheritance principle applied, as pybids'
            ``get_metadata`` returns it), BIDS units (s, degrees).
        source: the file named in error messages.

    Returns:
        ``{field: value}`` for the fields present, e.g. ``{"tr": 1900.0, "ti": 900.0, "flip_angle": 9.0}``.
    """
    if contrast not in SIDECAR_FIELDS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {sorted(SIDECAR_FIELDS)}")
    fields = {}
    for spec in SIDECAR_FIELDS[contrast]:
        key = next((key for key in spec.keys if key in metadata), None)
        if key is not None:
            fields[spec.field] = _converted(metadata[key], spec.kind, key, source)
    return fields


def _agree(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def dataset_protocols(records: Iterable[SidecarProtocol], rtol: float = DEFAULT_RTOL) -> dict[str, dict]:
    """One protocol per contrast from every session's sidecar fields; they must agree.

    Args:
        records: the :class:`SidecarProtocol` of every session and contrast.
        rtol: relative tolerance of agreement (:data:`DEFAULT_RTOL`).

    Returns:
        ``{contrast: {field: value}}`` (contrasts without any field left out); each value is the first session's
        (records in the order given).

    Raises:
        InvalidInputError: a field whose values differ beyond ``rtol`` between sessions, or that some sessions'
            sidecars give and others lack (the pipeline uses one protocol per contrast and dataset); the message
            lists every session, file and value of the field.
    """
    by_contrast: dict[str, list[SidecarProtocol]] = {}
    for record in records:
        by_contrast.setdefault(record.contrast, []).append(record)
    protocols, problems = {}, []
    for contrast, contrast_records in by_contrast.items():
        fields = {}
        for field in dict.fromkeys(f for record in contrast_records for f in record.fields):
            values = [record.fields.get(field) for record in contrast_records]
            present = [value for value in values if value is not None]
            if len(present) == len(values) and all(_agree(present[0], value, rtol) for value in present):
                fields[field] = present[0]
                continue
            listing = "; ".join(
                f"{record.session} ({record.source}): {'absent' if value is None else value}"
                for record, value in zip(contrast_records, values)
            )
            problems.append(f"{SUFFIXES[contrast]} {contrast}.{field} (ms / degrees) differs: {listing}")
        if fields:
            protocols[contrast] = fields
    if problems:
        raise InvalidInputError(
            f"the sessions' sidecars disagree beyond {rtol:.1%} (one protocol per contrast is used for the whole "
            "dataset: fix the sidecars or select consistent participants with participant_label):\n  "
            + "\n  ".join(problems)
        )
    return protocols


def protocol_problems(protocols: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """``{contrast: message}`` for each contrast whose fields do not give a valid protocol dataclass."""
    problems = {}
    for contrast, fields in protocols.items():
        try:
            physics.resolve_protocol(contrast, dict(fields))
        except ValueError as error:
            problems[contrast] = str(error)
    return problems


def manifest_protocols(manifest: str | os.PathLike | Mapping) -> dict[str, dict]:
    """The protocols a manifest records, ``{contrast: {field: value}}`` (ms, degrees; contrasts ``mprage``, ``tse``,
    ``flair``): its ``"protocols"`` record (BIDS manifests), else a phantom study's ``generator.protocols`` (the
    overrides it was imaged with), else ``{}`` (the default phantom study)."""
    if not isinstance(manifest, Mapping) and not os.path.isfile(manifest):
        return {}  # not written yet (configs are parsed before a phantom study is generated); loading reports it
    content = manifest if isinstance(manifest, Mapping) else read_manifest(manifest)
    if "protocols" in content:
        record = content["protocols"]
    else:
        generator = content.get("generator") or {}
        record = generator.get("protocols", {}) if generator.get("module") == "pipeline.phantom" else {}
    if not isinstance(record, Mapping) or not all(isinstance(fields, Mapping) for fields in record.values()):
        raise InvalidInputError(f"manifest {_name(manifest)}: 'protocols' must be {{contrast: {{field: value}}}}")
    unknown = sorted(set(record) - set(SIDECAR_FIELDS))
    if unknown:
        raise InvalidInputError(
            f"manifest {_name(manifest)}: protocols for unknown contrast(s) {unknown}; expected some of "
            f"{sorted(SIDECAR_FIELDS)}"
        )
    return {contrast: dict(fields) for contrast, fields in record.items()}


def _name(manifest) -> str:
    return "<dict>" if isinstance(manifest, Mapping) else f"'{manifest}'"


def _config_fields(contrast: str, protocol: Any) -> dict:
    """A config's protocol as ``{field: value}``: a mapping, or a protocol dataclass (all its fields count as set)."""
    if dataclasses.is_dataclass(protocol) and not isinstance(protocol, type):
        return dataclasses.asdict(protocol)
    if isinstance(protocol, Mapping):
        return dict(protocol)
    raise TypeError(f"config protocol for {contrast!r} must be a dict or a protocol dataclass, got {protocol!r}")


def resolve_protocols(
    manifest: str | os.PathLike | Mapping,
    config_protocols: Mapping[str, Any] | None = None,
    contrasts: Iterable[str] = ("mprage", "tse"),
    rtol: float = DEFAULT_RTOL,
) -> dict[str, dict]:
    """The protocols of the loss / QC contrasts: the manifest's (from the sidecars) merged with a bundle config's.

    For a bundle config, e.g. ``"protocols": "$pipeline.bids.resolve_protocols(@datalist, @config_protocols,
    @self_contrasts)"`` for ``HybridLoss(protocols=...)``. Safe for every manifest: without a protocols record
    (:func:`manifest_protocols`) the config's protocols are returned as given.

    Args:
        manifest: the manifest path or its parsed dict.
        config_protocols: ``{loss contrast: {field: value} or protocol dataclass}`` (ms, degrees) set by the user;
            fields the sidecars cannot give (e.g. ``tse_epg.refocusing_angle``, ``tse.echo_spacing``) go here.
        contrasts: the loss / QC contrasts (keys of :data:`LOSS_CONTRAST_SOURCES`: ``mprage``, ``tse``,
            ``tse_epg``, ``flair``); each takes the manifest's protocol of its weighted image.
        rtol: relative tolerance within which a config value and a sidecar value agree.

    Returns:
        ``{contrast: {field: value}}`` for the contrasts with any field set (others: ``{}``, the defaults), the
        config's value where both give one.

    Raises:
        InvalidInputError: a field the config and the sidecars both set to different values (names the manifest,
            the contrast, the field and both values), or merged fields that give an invalid protocol.
        ValueError: an unknown contrast, or config protocols for a contrast not in ``contrasts``.
    """
    contrasts = list(contrasts)
    unknown = sorted(set(contrasts) - set(LOSS_CONTRAST_SOURCES))
    if unknown:
        raise ValueError(f"unknown contrast(s) {unknown}; expected some of {sorted(LOSS_CONTRAST_SOURCES)}")
    config = {contrast: _config_fields(contrast, p) for contrast, p in dict(config_protocols or {}).items()}
    unused = sorted(set(config) - set(contrasts))
    if unused:
        raise ValueError(f"config protocols given for {unused}, which are not in contrasts {contrasts}")
    recorded = manifest_protocols(manifest)
    resolved, conflicts = {}, []
    for contrast in contrasts:
        source = LOSS_CONTRAST_SOURCES[contrast]
        from_manifest, from_config = recorded.get(source, {}), config.get(contrast, {})
        for field in sorted(from_manifest.keys() & from_config.keys()):
            a, b = from_manifest[field], from_config[field]
            if not isinstance(b, (int, float)) or isinstance(b, bool) or not _agree(float(a), float(b), rtol):
                conflicts.append(
                    f"{contrast}.{field}: {SUFFIXES[source]} sidecars {a} (manifest protocols.{source}) vs config {b}"
                )
        merged = {**from_manifest, **from_config}
        if merged:
            resolved[contrast] = merged
    if conflicts:
        raise InvalidInputError(
            f"the config's protocols contradict manifest {_name(manifest)} (ms / degrees; remove the config values "
            "or fix the sidecars):\n  " + "\n  ".join(conflicts)
        )
    problems = protocol_problems(resolved)
    if problems:
        raise InvalidInputError(
            f"protocols from manifest {_name(manifest)} and the config are invalid (fields BIDS sidecars cannot give, "
            "e.g. tse.echo_spacing, can be set in the config's protocols):\n  "
            + "\n  ".join(f"{contrast} {resolved[contrast]}: {message}" for contrast, message in problems.items())
        )
    return resolved
