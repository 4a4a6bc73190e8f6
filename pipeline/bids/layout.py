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

import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


from pipeline.data.errors import InvalidInputError, MissingFilesError

WEIGHTED_SUFFIXES = {"t1w": "T1w", "t2w": "T2w", "flair": "FLAIR"}
"""Manifest image key → BIDS suffix."""
MAP_SUFFIXES = {"t1_map": "T1map", "t2_map": "T2map", "m0_map": "M0map"}
"""Manifest label key → BIDS suffix (BIDS "Parametric maps")."""
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
RUN_RULES = ("error", "highest")
"""Rules for files that differ only in their ``run-`` entity (module docstring)."""
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
    sessions, problems, missing = [], [], {}
    for participant in _participants(layout, root, participant_label):
        labels = sorted(layout.get_sessions(subject=participant, datatype="anat")) + [None]
        for session in labels:
            name = f"sub-{participant}" + (f"_ses-{session}" if session else "")
            folder = f"sub-{participant}" + (f"/ses-{session}" if session else "") + "/anat"
            found = _session_files(layout, participant, session, WEIGHTED_SUFFIXES.values())
            if not found:
                continue
            chosen = _pick(found, WEIGHTED_SUFFIXES, f"{name} ({folder})", filters, runs, problems)
            missing.update(_missing_weighted_images(chosen, found, root / folder, name, filters))
            map_where = f"{name} ({(maps_root or root) / folder})"
            maps = _complete_maps(maps_layout, participant, session, map_where, filters, runs, problems)
            selected = {key: f for key, f in chosen.items() if f is not None}
            selected.update(maps)
            sessions.append(
                BIDSSession(
                    participant=participant,
                    session=session,
                    files={key: pathlib.Path(f.path) for key, f in selected.items()},
                    relpaths={key: pathlib.PurePath(f.relpath).as_posix() for key, f in selected.items()},
                    metadata={key: dict(f.get_metadata()) for key, f in selected.items()},
                    maps_dataset=("maps" if maps_root is not None else "raw") if maps else None,
                )
            )
    _raise_selection_problems(root, problems, missing, sessions)
    return sessions


def _participants(layout, root: pathlib.Path, participant_label: Iterable[str] | None) -> list[str]:
    """The dataset's participant labels (without ``sub-``), sorted, or those of ``participant_label``.

    Raises:
        InvalidInputError: ``participant_label`` names participants the dataset does not have.
    """
    participants = sorted(layout.get_subjects())
    if participant_label is not None:
        wanted = [_strip(label, "sub-") for label in participant_label]
        unknown = sorted(set(wanted) - set(participants))
        if unknown:
            raise InvalidInputError(f"BIDS dataset '{root}' has no participant(s) {unknown}; it has {participants}")
        participants = sorted(set(wanted))
    return participants


def _missing_weighted_images(
    chosen: Mapping, found: Mapping, folder: pathlib.Path, name: str, filters: Mapping[str, Mapping[str, str]]
) -> dict[str, str]:
    """``{expected path: what}`` of the weighted images the session lacks: no file of the suffix in ``folder``, or
    none its filter keeps (``chosen[key]`` None; suffixes left out of ``chosen`` were ambiguous, not missing)."""
    return {
        str(folder / f"{name}_{suffix}.nii.gz"): f"{name} {suffix}"
        + (f", none matching the filter {filters[suffix]}" if found.get(suffix) else "")
        for key, suffix in WEIGHTED_SUFFIXES.items()
        if key in chosen and chosen[key] is None
    }


def _complete_maps(
    maps_layout, participant: str, session: str | None, where: str, filters: dict, runs: str, problems: list
) -> dict:
    """``{key: BIDSFile}`` of the session's chosen T1map, T2map and M0map, or empty unless all three are there.

    A set with some maps but not all (none ambiguous) is appended to ``problems``: maps come as a complete set or not
    at all.
    """
    found = _session_files(maps_layout, participant, session, MAP_SUFFIXES.values())
    maps = _pick(found, MAP_SUFFIXES, where, filters, runs, problems)
    present = [key for key, value in maps.items() if value is not None]
    if present and len(maps) == len(MAP_SUFFIXES) and len(present) < len(maps):
        problems.append(
            f"{where}: has {[MAP_SUFFIXES[k] for k in present]} but not "
            f"{[MAP_SUFFIXES[k] for k in maps if k not in present]}: label maps come as a complete "
            "T1map/T2map/M0map set or not at all"
        )
    return maps if len(present) == len(MAP_SUFFIXES) else {}


def _raise_selection_problems(
    root: pathlib.Path, problems: Sequence[str], missing: Mapping[str, str], sessions: Sequence[BIDSSession]
) -> None:
    """Raise every problem of the file selection at once: ambiguous files and incomplete map sets
    (:class:`~pipeline.data.errors.InvalidInputError`), then missing weighted images
    (:class:`~pipeline.data.errors.MissingFilesError`), then a dataset without any weighted image."""
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
