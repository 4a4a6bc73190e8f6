"""The split of a BIDS dataset's sessions into training, validation and testing, per participant (a
``participants.tsv`` column, explicit labels, or everything in testing)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence


from pipeline.bids.layout import BIDSSession, _strip
from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import SECTIONS


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
