"""A BIDS dataset as the pipeline's decathlon manifest (docs/architecture.md): which files, which split, which units.

Files (BIDS specification: "Magnetic Resonance Imaging > Anatomy imaging data", including "Parametric maps"):

* weighted images: ``sub-<label>[/ses-<label>]/anat/*_T1w``, ``*_T2w``, ``*_FLAIR`` (``.nii.gz`` or ``.nii``) → the
  manifest's ``t1w``, ``t2w``, ``flair``; all three are required per session;
* label maps (optional, all three or none): ``*_T1map``, ``*_T2map``, ``*_M0map`` in the raw dataset or, with
  ``maps_dir``, only in that (derivative) dataset (BIDS "Derivatives > Common data types"; any ``desc-``/``space-``
  entities, selected like the weighted images) → ``t1_map``, ``t2_map``, ``m0_map``.

One manifest entry per subject and session, named ``sub-X_ses-Y`` (``sub-X`` without sessions). When a session has
several files of one suffix (``acq-``, ``rec-``, ``run-``, ... entities), ``filters`` narrow them (``{"T1w": {"acq":
"mprage"}}``, entities by their BIDS key or long name) and the rule ``runs`` chooses between files that differ only in
their ``run-`` entity: ``"error"`` (the default: the dataset must say which one) or ``"highest"`` (the last
repetition, usually the one repeated because an earlier one failed). Anything still ambiguous raises
:class:`~pipeline.data.errors.InvalidInputError` listing the candidates.

Units: BIDS T1 and T2 maps are in seconds (the ``T1map``/``T2map`` suffix definitions; qMRI sidecars ``"Units":
"s"``); the pipeline's maps are in ms. The sidecar's ``Units`` decides the factor (:data:`UNIT_FACTORS_TO_MS`: ``s`` ×
1000, ``ms`` × 1; absent: the spec's seconds; anything else: an error), and the converted maps are written as float32
NIfTI into a cache outside the BIDS dataset, ``<cache_dir>/<entry>/t1_map.nii.gz`` / ``t2_map.nii.gz`` (default
``cache_dir``: ``maps_ms/`` beside the manifest), each with a ``.source.json`` record of its source (path, size,
modification time, factor) so that an up-to-date copy is reused. M0 maps (arbitrary units) are used in place.

Split: per participant (all sessions of a participant in one datalist, so no participant is in two), from a
``participants.tsv`` column holding ``training``/``validation``/``testing``, or from explicit lists of participant
labels, or by default every entry in ``testing`` (inference on new subjects). Training and validation entries need
the label maps.

The dataset is indexed with pybids' ``BIDSLayout(validate=False)``: pybids' validation would silently leave files
it considers invalid out of the index, whereas here every file is indexed and the selection rules above report what
does not fit; validate the dataset itself with the bids-validator.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

from pipeline.bids import protocols as bids_protocols
from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import SECTIONS
from pipeline.files import write_atomically

WEIGHTED_SUFFIXES = {"t1w": "T1w", "t2w": "T2w", "flair": "FLAIR"}
"""Manifest image key → BIDS suffix."""
MAP_SUFFIXES = {"t1_map": "T1map", "t2_map": "T2map", "m0_map": "M0map"}
"""Manifest label key → BIDS suffix (BIDS "Parametric maps")."""
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
UNIT_FACTORS_TO_MS = {"s": 1000.0, "ms": 1.0}
"""Accepted sidecar ``Units`` of T1/T2 maps → factor to ms."""
SPEC_MAP_UNIT = "s"
"""The unit of T1map / T2map in the BIDS specification, assumed when a sidecar has no ``Units``."""
RUN_RULES = ("error", "highest")
"""Rules for files that differ only in their ``run-`` entity (module docstring)."""
CACHE_DIR_NAME = "maps_ms"
"""Default cache folder of the ms maps, beside the manifest."""
MAP_MEDIAN_RANGES_MS = {"t1_map": (100.0, 10000.0), "t2_map": (10.0, 5000.0)}
"""Plausible median (ms) of a converted map's positive voxels, to catch wrong ``Units`` (as
``pipeline.data.transforms.T1_MEDIAN_RANGE_MS`` / ``T2_MEDIAN_RANGE_MS``)."""
_ENTITY_PATTERN = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9+]+)")


@dataclass(frozen=True)
class BIDSSession:
    """The files of one subject (and session) chosen for the manifest.

    Attributes:
        participant: subject label without ``sub-`` (``"01"``).
        session: session label without ``ses-``, or None.
        files: manifest key (:data:`WEIGHTED_SUFFIXES`, :data:`MAP_SUFFIXES`) → absolute path.
        relpaths: manifest key → POSIX path relative to the root of the dataset holding it.
        metadata: manifest key → the file's sidecar metadata (BIDS inheritance applied).
        maps_dataset: ``"raw"`` or ``"maps"`` (the ``maps_dir`` dataset) for the label maps; None without maps.
    """

    participant: str
    session: str | None
    files: dict[str, pathlib.Path]
    relpaths: dict[str, str]
    metadata: dict[str, dict] = field(default_factory=dict)
    maps_dataset: str | None = None

    @property
    def name(self) -> str:
        """The manifest entry's ``subject``: ``sub-X_ses-Y`` or ``sub-X``."""
        return f"sub-{self.participant}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def has_maps(self) -> bool:
        return all(key in self.files for key in MAP_SUFFIXES)


def _strip(label: str, prefix: str) -> str:
    label = str(label)
    return label.removeprefix(prefix)


def filename_entities(path: str | os.PathLike) -> dict[str, str]:
    """The ``key-value`` entities of a BIDS file name by their BIDS keys (``{"sub": "01", "acq": "x", "run": "2"}``)."""
    stem = pathlib.Path(path).name.split(".")[0]
    return dict(
        _ENTITY_PATTERN.fullmatch(part).groups() for part in stem.split("_")[:-1] if _ENTITY_PATTERN.fullmatch(part)
    )


def _entity_keys() -> dict[str, str]:
    """Long entity name or BIDS key → BIDS key (``"acquisition"`` → ``"acq"``), from bidsschematools' schema."""
    from bidsschematools.schema import load_schema

    entities = load_schema().objects.entities
    keys = {name: spec["name"] for name, spec in entities.items()}
    keys.update({spec["name"]: spec["name"] for spec in entities.values()})
    return keys


def normalise_filters(filters: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    """``{suffix: {BIDS entity key: value}}`` of user filters, entity names checked against the BIDS schema."""
    if not filters:
        return {}
    suffixes = set(WEIGHTED_SUFFIXES.values()) | set(MAP_SUFFIXES.values())
    keys = _entity_keys()
    normalised = {}
    for suffix, entities in filters.items():
        if suffix not in suffixes:
            raise ValueError(f"filter for unknown suffix {suffix!r}; expected one of {sorted(suffixes)}")
        unknown = sorted(set(entities) - set(keys))
        if unknown:
            raise ValueError(f"filter {suffix}: unknown BIDS entities {unknown}")
        normalised[suffix] = {keys[name]: str(value) for name, value in entities.items()}
    return normalised


def choose_file(
    candidates: Sequence[str], suffix: str, where: str, filters: Mapping[str, str] | None = None, runs: str = "error"
) -> str | None:
    """The one file of ``candidates`` (paths of one suffix in one session) the selection rules pick, or None.

    Args:
        candidates: file paths (absolute or relative).
        suffix: their BIDS suffix (for messages).
        where: the session and folder, for messages.
        filters: ``{BIDS entity key: value}`` every chosen file must match (``{"acq": "mprage"}``).
        runs: :data:`RUN_RULES`: ``"highest"`` takes the highest ``run-`` of files that differ only in it.

    Raises:
        InvalidInputError: several files remain; the message lists them.
    """
    if runs not in RUN_RULES:
        raise ValueError(f"runs must be one of {RUN_RULES}, got {runs!r}")
    filters = dict(filters or {})
    kept = [path for path in candidates if all(filename_entities(path).get(k) == v for k, v in filters.items())]
    if len(kept) <= 1:
        return kept[0] if kept else None
    entities = [filename_entities(path) for path in kept]
    without_run = [{k: v for k, v in e.items() if k != "run"} for e in entities]
    same_but_run = all(e == without_run[0] for e in without_run) and all("run" in e for e in entities)
    same_extension = len({pathlib.Path(path).name.split(".", 1)[1] for path in kept}) == 1
    if runs == "highest" and same_but_run and same_extension:
        return max(kept, key=lambda path: int(filename_entities(path)["run"]))
    hint = (
        "pass runs='highest' (--runs highest) to take the highest run, or a filter"
        if same_but_run
        else f"pass a filter (e.g. --filter {suffix}:acq=LABEL) that keeps one"
    )
    listing = "\n    ".join(sorted(str(path) for path in kept))
    raise InvalidInputError(
        f"{where}: {len(kept)} {suffix} files, which one to use is ambiguous ({hint}):\n    {listing}"
    )


def _layout(root: pathlib.Path, derivative: bool):
    """pybids' index of ``root`` (``validate=False``: see the module docstring)."""
    import bids  # imported here: slow to import, only needed to read a dataset

    if not root.is_dir():
        raise MissingFilesError(f"BIDS dataset folder '{root}' does not exist", [str(root)])
    return bids.BIDSLayout(str(root), validate=False, is_derivative=derivative)


def _session_files(layout, participant: str, session: str | None, suffixes: Iterable[str]) -> dict[str, list]:
    """``{suffix: [BIDSFile]}`` of the NIfTI files in ``anat/`` of one subject and session (None: no session)."""
    from bids.layout import Query

    files = layout.get(
        subject=participant,
        session=session if session else Query.NONE,
        datatype="anat",
        suffix=list(suffixes),
        extension=list(NIFTI_EXTENSIONS),
    )
    found: dict[str, list] = {}
    for bids_file in files:
        found.setdefault(bids_file.entities["suffix"], []).append(bids_file)
    return found


def _pick(found: dict, suffixes: Mapping[str, str], where: str, filters: dict, runs: str, problems: list) -> dict:
    """``{key: BIDSFile or None}`` the rules choose per suffix of ``suffixes`` (key → suffix) among ``found``.

    An ambiguous suffix is appended to ``problems`` and left out of the result (neither chosen nor missing).
    """
    chosen = {}
    for key, suffix in suffixes.items():
        by_path = {f.relpath: f for f in found.get(suffix, [])}
        try:
            chosen[key] = by_path.get(choose_file(sorted(by_path), suffix, where, filters.get(suffix), runs))
        except InvalidInputError as error:
            problems.append(str(error))
    return chosen


def find_sessions(
    bids_root: str | os.PathLike,
    maps_dir: str | os.PathLike | None = None,
    participant_label: Iterable[str] | None = None,
    runs: str = "error",
    filters: Mapping[str, Mapping[str, str]] | None = None,
) -> list[BIDSSession]:
    """The subjects and sessions of a BIDS dataset with their chosen weighted images and label maps.

    Args:
        bids_root: the raw BIDS dataset.
        maps_dir: a (derivative) BIDS dataset holding the T1map/T2map/M0map; None: the maps of the raw dataset.
        participant_label: only these participants (labels with or without ``sub-``); None: all.
        runs: rule for files differing only in ``run-`` (:data:`RUN_RULES`).
        filters: ``{suffix: {entity: value}}`` (:func:`normalise_filters`).

    Returns:
        one :class:`BIDSSession` per subject-session that has any T1w/T2w/FLAIR in ``anat/`` (participants without
        any are skipped), sorted by participant and session.

    Raises:
        InvalidInputError: unknown participants, ambiguous files, an incomplete map set (all listed at once).
        MissingFilesError: sessions lacking a weighted image (all listed at once).
    """
    root = pathlib.Path(bids_root).resolve()
    layout = _layout(root, derivative=False)
    maps_root = pathlib.Path(maps_dir).resolve() if maps_dir is not None else None
    maps_layout = _layout(maps_root, derivative=True) if maps_root is not None else layout
    filters = normalise_filters(filters)
    participants = sorted(layout.get_subjects())
    if participant_label is not None:
        wanted = [_strip(label, "sub-") for label in participant_label]
        unknown = sorted(set(wanted) - set(participants))
        if unknown:
            raise InvalidInputError(f"BIDS dataset '{root}' has no participant(s) {unknown}; it has {participants}")
        participants = sorted(set(wanted))
    sessions, problems, missing = [], [], {}
    for participant in participants:
        labels = sorted(layout.get_sessions(subject=participant, datatype="anat")) + [None]
        for session in labels:
            name = f"sub-{participant}" + (f"_ses-{session}" if session else "")
            folder = f"sub-{participant}" + (f"/ses-{session}" if session else "") + "/anat"
            found = _session_files(layout, participant, session, WEIGHTED_SUFFIXES.values())
            if not found:
                continue
            chosen = _pick(found, WEIGHTED_SUFFIXES, f"{name} ({folder})", filters, runs, problems)
            for key, suffix in WEIGHTED_SUFFIXES.items():
                if key in chosen and chosen[key] is None:
                    missing[str(root / folder / f"{name}_{suffix}.nii.gz")] = f"{name} {suffix}" + (
                        f", none matching the filter {filters[suffix]}" if found.get(suffix) else ""
                    )
            map_found = _session_files(maps_layout, participant, session, MAP_SUFFIXES.values())
            map_where = f"{name} ({(maps_root or root) / folder})"
            maps = _pick(map_found, MAP_SUFFIXES, map_where, filters, runs, problems)
            present = [key for key, value in maps.items() if value is not None]
            if present and len(maps) == len(MAP_SUFFIXES) and len(present) < len(maps):
                problems.append(
                    f"{map_where}: has {[MAP_SUFFIXES[k] for k in present]} but not "
                    f"{[MAP_SUFFIXES[k] for k in maps if k not in present]}: label maps come as a complete "
                    "T1map/T2map/M0map set or not at all"
                )
            with_maps = len(present) == len(MAP_SUFFIXES)
            selected = {key: f for key, f in chosen.items() if f is not None}
            if with_maps:
                selected.update(maps)
            sessions.append(
                BIDSSession(
                    participant=participant,
                    session=session,
                    files={key: pathlib.Path(f.path) for key, f in selected.items()},
                    relpaths={key: pathlib.PurePath(f.relpath).as_posix() for key, f in selected.items()},
                    metadata={key: dict(f.get_metadata()) for key, f in selected.items()},
                    maps_dataset=("maps" if maps_root is not None else "raw") if with_maps else None,
                )
            )
    if problems:
        raise InvalidInputError(f"BIDS dataset '{root}':\n  " + "\n  ".join(problems))
    if missing:
        lines = "\n  ".join(f"{path} ({what})" for path, what in missing.items())
        raise MissingFilesError(
            f"BIDS dataset '{root}': {len(missing)} weighted image(s) missing (every session needs T1w, T2w and "
            f"FLAIR in anat/):\n  {lines}",
            list(missing),
        )
    if not sessions:
        raise InvalidInputError(f"BIDS dataset '{root}' has no T1w, T2w or FLAIR images in any sub-*/[ses-*/]anat/")
    return sessions


def _participants_column(bids_root: pathlib.Path, column: str) -> dict[str, str]:
    """``{participant label: value}`` of a participants.tsv column."""
    import pandas as pd

    path = bids_root / "participants.tsv"
    if not path.is_file():
        raise MissingFilesError(f"split column {column!r} requested but '{path}' does not exist", [str(path)])
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table.columns or column not in table.columns:
        raise InvalidInputError(
            f"'{path}' has no {column!r} column (or no participant_id); its columns: {list(table.columns)}"
        )
    return {_strip(pid, "sub-"): value for pid, value in zip(table["participant_id"], table[column])}


def assign_splits(
    sessions: Sequence[BIDSSession],
    bids_root: str | os.PathLike,
    split: str | None = None,
    training: Iterable[str] | None = None,
    validation: Iterable[str] | None = None,
    testing: Iterable[str] | None = None,
) -> dict[str, list[BIDSSession]]:
    """Sessions per datalist (``training``, ``validation``, ``testing``), decided per participant.

    Args:
        sessions: from :func:`find_sessions`.
        bids_root: the dataset (for ``participants.tsv``).
        split: a ``participants.tsv`` column whose values are ``training``/``validation``/``testing``.
        training, validation, testing: explicit participant labels (with or without ``sub-``); every participant
            of ``sessions`` must be in exactly one (use ``participant_label`` to leave some out).
        Neither: every session in ``testing``.

    Raises:
        ValueError: ``split`` together with explicit lists.
        InvalidInputError: participants missing from the column or lists, unknown or duplicated labels, values that
            are not a datalist name; training/validation sessions without label maps.
    """
    root = pathlib.Path(bids_root)
    lists = {"training": training, "validation": validation, "testing": testing}
    participants = sorted({s.participant for s in sessions})
    if split is not None and any(v is not None for v in lists.values()):
        raise ValueError("give either split (a participants.tsv column) or explicit training/validation/testing lists")
    if split is not None:
        column = _participants_column(root, split)
        lacking = [p for p in participants if p not in column]
        if lacking:
            raise InvalidInputError(f"'{root / 'participants.tsv'}' has no row for participant(s) {lacking}")
        bad = {f"sub-{p}": column[p] for p in participants if column[p] not in SECTIONS}
        if bad:
            raise InvalidInputError(
                f"'{root / 'participants.tsv'}' column {split!r}: values {bad} are not one of {list(SECTIONS)}"
            )
        section_of = {p: column[p] for p in participants}
    elif any(v is not None for v in lists.values()):
        section_of, problems = {}, []
        for section, labels in lists.items():
            for label in [_strip(label, "sub-") for label in (labels or [])]:
                if label not in participants:
                    problems.append(f"{section} lists sub-{label}, which is not among the participants {participants}")
                elif label in section_of:
                    problems.append(f"sub-{label} is in both {section_of[label]} and {section}")
                else:
                    section_of[label] = section
        unlisted = [f"sub-{p}" for p in participants if p not in section_of]
        if unlisted:
            problems.append(f"participant(s) {unlisted} are in no list (leave them out with participant_label)")
        if problems:
            raise InvalidInputError("split lists:\n  " + "\n  ".join(problems))
    else:
        section_of = {p: "testing" for p in participants}
    splits = {section: [s for s in sessions if section_of[s.participant] == section] for section in SECTIONS}
    unlabelled = [s.name for section in ("training", "validation") for s in splits[section] if not s.has_maps]
    if unlabelled:
        raise InvalidInputError(
            f"training / validation sessions need T1map, T2map and M0map label maps; {unlabelled} have none"
        )
    return splits


def _record_of(source: pathlib.Path, factor: float, units: str) -> dict:
    status = source.stat()
    return {
        "source": str(source),
        "size": status.st_size,
        "mtime_ns": status.st_mtime_ns,
        "units": units,
        "factor_to_ms": factor,
    }


def convert_map_to_ms(
    source: str | os.PathLike,
    target: str | os.PathLike,
    factor: float,
    units: str,
    key: str,
    where: str,
    overwrite: bool = False,
) -> pathlib.Path:
    """``target``: ``source`` (a T1/T2 map) × ``factor`` as float32 NIfTI in ms, reused while up to date.

    A ``<target stem>.source.json`` record (source path, size, modification time, units, factor) marks the copy as
    this function's: an existing ``target`` with a matching record is kept, one with another record is rewritten,
    one without a record (not written here) raises :class:`FileExistsError` unless ``overwrite``.

    Args:
        source: the BIDS map. target: the ms copy (folders created).
        factor: ms per source unit (:data:`UNIT_FACTORS_TO_MS`). units: the source's unit, recorded.
        key: ``t1_map`` or ``t2_map``, for the plausibility check (:data:`MAP_MEDIAN_RANGES_MS`).
        where: the session, for messages.

    Raises:
        InvalidInputError: the converted map's median (positive voxels) is implausible for ``key`` in ms.
    """
    source, target = pathlib.Path(source), pathlib.Path(target)
    record_path = target.with_name(target.name.replace(".nii.gz", "") + ".source.json")
    record = _record_of(source, factor, units)
    if target.exists():
        existing = json.loads(record_path.read_text()) if record_path.is_file() else None
        if existing == record:
            return target
        if existing is None and not overwrite:
            raise FileExistsError(f"'{target}' exists and was not written by pipeline.bids; pass overwrite=True")
    image = nib.load(source)
    data = np.asarray(image.dataobj, dtype=np.float32) * np.float32(factor)
    positive = data[np.isfinite(data) & (data > 0)]
    low, high = MAP_MEDIAN_RANGES_MS[key]
    median = float(np.median(positive)) if positive.size else float("nan")
    if not low <= median <= high:
        raise InvalidInputError(
            f"{where}: {MAP_SUFFIXES[key]} file '{source}' has a median of {median:.4g} ms (positive voxels) after "
            f"converting from Units {units!r} (x {factor:g}), outside the plausible {low:g}-{high:g} ms: are its "
            'sidecar\'s Units right? (BIDS: seconds, "Units": "s")'
        )
    converted = nib.Nifti1Image(data, image.affine, header=image.header)
    converted.header.set_data_dtype(np.float32)
    converted.header.set_slope_inter(1.0, 0.0)
    write_atomically(target, gzip.compress(converted.to_bytes(), compresslevel=1, mtime=0))
    write_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return target


def map_units_factor(metadata: Mapping, key: str, where: str, path: str) -> tuple[str, float]:
    """``(units, factor to ms)`` of a T1/T2 map from its sidecar's ``Units`` (absent: the spec's seconds)."""
    units = metadata.get("Units", SPEC_MAP_UNIT)
    if units not in UNIT_FACTORS_TO_MS:
        raise InvalidInputError(
            f"{where}: {MAP_SUFFIXES[key]} file '{path}': sidecar Units {units!r} is not one of "
            f'{sorted(UNIT_FACTORS_TO_MS)} (BIDS: T1map/T2map in seconds, "Units": "s")'
        )
    return units, UNIT_FACTORS_TO_MS[units]


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
    return path == folder or folder in path.parents


def check_outside_dataset(
    path: pathlib.Path, what: str, bids_root: pathlib.Path, maps_root: pathlib.Path | None = None
) -> None:
    """:class:`ValueError` if ``path`` lies in the user's data: the raw BIDS dataset outside its ``derivatives/``, or
    the ``maps_dir`` dataset (``what`` names the path in the message)."""
    if _inside(path, bids_root) and not _inside(path, bids_root / "derivatives"):
        raise ValueError(
            f"the {what} '{path}' would be inside the BIDS dataset '{bids_root}': choose a folder outside it "
            "(or under its derivatives/)"
        )
    if maps_root is not None and _inside(path, maps_root):
        raise ValueError(f"the {what} '{path}' would be inside the maps dataset '{maps_root}': choose another folder")


def _sidecar_name(image: pathlib.Path, root: pathlib.Path) -> str:
    """The image's own sidecar (relative to ``root``) if it has one, else the image named as inheriting sidecars."""
    sidecar = image.with_name(image.name.split(".")[0] + ".json")
    relative = (sidecar if sidecar.is_file() else image).relative_to(root).as_posix()
    return relative if sidecar.is_file() else f"sidecars inherited by {relative}"


def session_protocols(sessions: Sequence[BIDSSession], bids_root: pathlib.Path, rtol: float) -> dict[str, dict]:
    """The dataset's ``{contrast: {field: value}}`` from the weighted images' sidecars (:mod:`~pipeline.bids.protocols`)."""
    records = [
        bids_protocols.SidecarProtocol(
            session.name,
            contrast,
            _sidecar_name(session.files[key], bids_root),
            bids_protocols.sidecar_protocol(
                contrast, session.metadata.get(key, {}), _sidecar_name(session.files[key], bids_root)
            ),
        )
        for session in sessions
        for key, contrast in bids_protocols.WEIGHTED_CONTRASTS.items()
    ]
    return bids_protocols.dataset_protocols(records, rtol)


def write_manifest(
    bids_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    maps_dir: str | os.PathLike | None = None,
    participant_label: Iterable[str] | None = None,
    split: str | None = None,
    training: Iterable[str] | None = None,
    validation: Iterable[str] | None = None,
    testing: Iterable[str] | None = None,
    runs: str = "error",
    filters: Mapping[str, Mapping[str, str]] | None = None,
    cache_dir: str | os.PathLike | None = None,
    protocol_rtol: float = bids_protocols.DEFAULT_RTOL,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write the decathlon manifest of a BIDS dataset (and the ms copies of its T1/T2 maps).

    Args:
        bids_root: the raw BIDS dataset (read only).
        out: the manifest JSON to write; outside the BIDS dataset (or under its ``derivatives/``).
        maps_dir, participant_label, runs, filters: which files (:func:`find_sessions`).
        split, training, validation, testing: which datalist (:func:`assign_splits`).
        cache_dir: folder of the ms maps; default ``maps_ms/`` beside ``out``; outside the BIDS datasets.
        protocol_rtol: tolerance within which the sessions' sidecar values must agree.
        overwrite: replace an existing ``out`` (else :class:`FileExistsError`), and foreign files in the cache.

    Returns:
        the manifest path. Its paths are relative to its folder (docs/architecture.md); besides the datalists it
        holds ``bids_root`` (relative to its folder), ``maps_dir`` (idem, if given), ``selection``, ``split``,
        ``protocols`` (``{contrast: {field: value}}``, ms / degrees, :mod:`pipeline.bids.protocols`) and per entry a
        ``bids`` record: ``subject``, ``session`` (if any), the path of each file relative to its dataset's root
        (keys as the entry's), ``maps_dataset`` (``raw`` or ``maps``) — what
        :func:`pipeline.bids.write_derivatives` needs to name outputs and cite their ``Sources``.
    """
    root = pathlib.Path(bids_root).resolve()
    out = pathlib.Path(out).resolve()
    maps_root = pathlib.Path(maps_dir).resolve() if maps_dir is not None else None
    cache = pathlib.Path(cache_dir).resolve() if cache_dir is not None else out.parent / CACHE_DIR_NAME
    check_outside_dataset(out, "manifest", root, maps_root)
    check_outside_dataset(cache, "map cache folder", root, maps_root)
    if out.exists() and not overwrite:
        raise FileExistsError(f"manifest '{out}' exists; pass overwrite=True (--overwrite) to replace it")
    sessions = find_sessions(root, maps_root, participant_label, runs, filters)
    splits = assign_splits(sessions, root, split, training, validation, testing)
    selected = [s for section in SECTIONS for s in splits[section]]
    protocols = session_protocols(selected, root, protocol_rtol)
    base = out.parent

    def relative(path: pathlib.Path) -> str:
        return pathlib.Path(os.path.relpath(path, base)).as_posix()

    def entry_of(session: BIDSSession) -> dict:
        entry = {"subject": session.name}
        entry.update({key: relative(session.files[key]) for key in WEIGHTED_SUFFIXES})
        if session.has_maps:
            for key in MAP_SUFFIXES:
                where = f"{session.name}"
                if key == "m0_map":
                    entry[key] = relative(session.files[key])
                    continue
                units, factor = map_units_factor(session.metadata.get(key, {}), key, where, str(session.files[key]))
                target = cache / session.name / f"{key}.nii.gz"
                entry[key] = relative(
                    convert_map_to_ms(session.files[key], target, factor, units, key, where, overwrite)
                )
        entry["bids"] = {
            "subject": session.participant,
            **({"session": session.session} if session.session else {}),
            **session.relpaths,
            **({"maps_dataset": session.maps_dataset} if session.maps_dataset else {}),
        }
        return entry

    manifest = {
        "name": f"BIDS dataset {root.name}",
        "description": (
            f"Manifest of the BIDS dataset '{root}' written by pipeline.bids.write_manifest: weighted images in place, "
            "T1/T2 label maps converted from the BIDS seconds to ms in the cache folder, M0 maps in place."
        ),
        "map_units": {"t1_map": "ms", "t2_map": "ms", "m0_map": "a.u."},
        "bids_root": relative(root),
        **({"maps_dir": relative(maps_root)} if maps_root is not None else {}),
        "selection": {
            "runs": runs,
            "filters": normalise_filters(filters),
            **(
                {"participant_label": sorted(_strip(p, "sub-") for p in participant_label)} if participant_label else {}
            ),
        },
        "split": (
            {"participants_column": split}
            if split is not None
            else {
                "lists": {
                    k: sorted(_strip(p, "sub-") for p in v)
                    for k, v in {"training": training, "validation": validation, "testing": testing}.items()
                    if v
                }
            }
            if any(v is not None for v in (training, validation, testing))
            else {"default": "testing"}
        ),
        "protocols": protocols,
        **{section: [entry_of(s) for s in splits[section]] for section in SECTIONS},
    }
    problems = bids_protocols.protocol_problems(protocols)
    if problems:
        import warnings

        warnings.warn(
            f"manifest '{out}': the sidecars' protocols with the defaults of the other fields are invalid, so a "
            f"bundle config must set the missing fields (pipeline.bids.resolve_protocols): {problems}",
            stacklevel=2,
        )
    write_atomically(out, json.dumps(manifest, indent=2) + "\n")
    return out


def bids_root_of(manifest: str | os.PathLike | Mapping, base_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The absolute BIDS root a manifest records.

    Args:
        manifest: the manifest's path, or its parsed dict.
        base_dir: the folder a relative ``bids_root`` is relative to; default: the manifest's folder (required for a
            dict with a relative ``bids_root``).
    """
    from pipeline.data.manifest import read_manifest

    content = manifest if isinstance(manifest, Mapping) else read_manifest(manifest)
    name = "<dict>" if isinstance(manifest, Mapping) else f"'{manifest}'"
    if "bids_root" not in content:
        raise InvalidInputError(f"manifest {name} has no 'bids_root': not written by pipeline.bids.write_manifest")
    root = pathlib.Path(content["bids_root"])
    if root.is_absolute():
        return root
    if base_dir is None:
        if isinstance(manifest, Mapping):
            raise InvalidInputError(
                "a manifest dict with a relative 'bids_root' needs base_dir (the manifest's folder)"
            )
        base_dir = pathlib.Path(manifest).resolve().parent
    return (pathlib.Path(base_dir) / root).resolve()
