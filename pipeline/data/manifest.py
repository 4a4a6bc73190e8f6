"""Manifest (decathlon-style ``dataset.json``) reading, validation and default-study regeneration.

A manifest holds ``training`` / ``validation`` / ``testing`` lists of entries; each entry maps the keys below to
file paths relative to the dataset dir (the manifest's folder unless given), plus an optional ``subject`` name.
See docs/architecture.md for the full format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist

from pipeline.data.errors import InvalidInputError, MissingFilesError

IMAGE_KEYS = ("t1w", "t2w", "flair")
"""Weighted images, in the channel order of ``image``: T1w MPRAGE, T2w TSE, T2w FLAIR (1 mm grid)."""
LABEL_KEYS = ("t1_map", "t2_map", "m0_map")
"""Low-resolution label maps (T1, T2 in ms, M0 in a.u.), in the channel order of ``label``."""
REFERENCE_KEYS = ("t1_ref", "t2_ref", "m0_ref")
"""Optional 1 mm reference maps (validation / testing), in the channel order of ``reference``."""
MASK_KEY = "mask"
"""Optional brain mask (non-zero = brain)."""
SUBJECT_KEY = "subject"
PATH_KEYS = IMAGE_KEYS + LABEL_KEYS + REFERENCE_KEYS + (MASK_KEY,)
"""Every entry key whose value is a file path."""
SECTIONS = ("training", "validation", "testing")
"""The datalist sections of a manifest."""


def read_manifest(manifest: str | os.PathLike) -> dict:
    """The parsed JSON of ``manifest``; :class:`MissingFilesError` / :class:`InvalidInputError` naming the file."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise MissingFilesError(f"manifest '{manifest}' does not exist", [str(manifest)])
    try:
        return json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"manifest '{manifest}' is not valid JSON: {error}") from error


def manifest_base_dir(manifest: str | os.PathLike, dataset_dir: str | os.PathLike | None = None) -> Path:
    """The folder a manifest's relative paths are resolved against (absolute): ``dataset_dir`` when given, else the
    manifest's own ``"dataset_dir"`` entry (relative to the manifest's folder; the embedded ``data_manifest.json``
    says ``data/phantom``), else the manifest's folder (what ``python -m pipeline.bids manifest`` writes)."""
    if dataset_dir is None or str(dataset_dir) == "":
        manifest = Path(manifest)
        dataset_dir = manifest.parent / read_manifest(manifest).get("dataset_dir", ".")
    return Path(dataset_dir).resolve()


def subject_name(entry: dict) -> str:
    """The entry's ``subject``, else the T1w file name without its NIfTI extension(s)."""
    if entry.get(SUBJECT_KEY):
        return str(entry[SUBJECT_KEY])
    name = Path(entry["t1w"]).name
    for extension in (".gz", ".nii", ".mgz", ".nrrd"):
        name = name.removesuffix(extension)
    return name


def missing_files(datalist: Sequence[dict]) -> dict[str, str]:
    """``{path: "<subject> <key>"}`` for every path value (keys in :data:`PATH_KEYS`) that is not an existing file."""
    return {
        entry[key]: f"{entry.get(SUBJECT_KEY, '?')} {key}"
        for entry in datalist
        for key in PATH_KEYS
        if key in entry and not Path(entry[key]).is_file()
    }


def _missing_files_error(message: str, missing: dict[str, str]) -> MissingFilesError:
    """A :class:`MissingFilesError` whose message lists every missing file with its subject and key."""
    lines = [f"{path} ({description})" for path, description in missing.items()]
    return MissingFilesError(f"{message}: {len(lines)} missing file(s):\n  " + "\n  ".join(lines), list(missing))


def check_datalist(datalist: Sequence[dict], source: str = "datalist") -> list[dict]:
    """Validate resolved entries and fill in ``subject``; returns new entry dicts.

    Checks: every entry has the weighted images :data:`IMAGE_KEYS`; the label and reference groups are complete or
    absent; every file exists. Raises :class:`InvalidInputError` (keys) or :class:`MissingFilesError` naming every
    missing file. ``source`` names the datalist in messages (e.g. ``"manifest.json [training]"``).
    """
    if not datalist:
        raise InvalidInputError(f"{source}: no entries")
    checked = []
    for index, entry in enumerate(datalist):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{source}: entry {index} is a {type(entry).__name__}, expected a dict")
        lacking = [key for key in IMAGE_KEYS if key not in entry]
        for group in (LABEL_KEYS, REFERENCE_KEYS):
            if any(key in entry for key in group):
                lacking += [key for key in group if key not in entry]
        if lacking:
            raise InvalidInputError(f"{source}: entry {index} ({entry.get(SUBJECT_KEY, '?')}) lacks keys {lacking}")
        checked.append({**entry, SUBJECT_KEY: subject_name(entry)})
    missing = missing_files(checked)
    if missing:
        raise _missing_files_error(source, missing)
    return checked


def _resolve_paths(entries: Sequence[dict], raw_entries: Sequence[dict], base_dir: Path) -> list[dict]:
    """Entries with every path key resolved against ``base_dir`` and the other keys as written in the manifest.

    ``load_decathlon_datalist`` joins ``base_dir`` only to values that name an existing path (a missing file stays
    relative, and ``subject`` becomes a path when a folder of that name exists), so it is fixed up here.
    """
    return [
        {
            **entry,
            **{key: os.path.normpath(base_dir / value) if key in PATH_KEYS else value for key, value in raw.items()},
        }
        for entry, raw in zip(entries, raw_entries)
    ]


def load_datalist(
    manifest: str | os.PathLike, section: str = "training", dataset_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Load one section of a manifest with ``monai.data.load_decathlon_datalist`` and validate it.

    Args:
        manifest: path of the decathlon-style JSON manifest.
        section: ``"training"``, ``"validation"``, ``"testing"`` (or any other list in the manifest).
        dataset_dir: folder the relative paths are resolved against; default: :func:`manifest_base_dir`.

    Returns:
        a list of entry dicts with absolute file paths and a ``subject`` name (see :func:`check_datalist`).
    """
    raw_entries = read_manifest(manifest).get(section)
    if not isinstance(raw_entries, list):
        raise InvalidInputError(f"manifest '{manifest}' has no '{section}' list")
    base_dir = manifest_base_dir(manifest, dataset_dir)
    entries = load_decathlon_datalist(manifest, is_segmentation=False, data_list_key=section, base_dir=base_dir)
    return check_datalist(_resolve_paths(entries, raw_entries, base_dir), f"manifest '{manifest}' [{section}]")


def _manifest_missing_files(manifest: dict, base_dir: Path) -> dict[str, str]:
    """Missing files of every section of a parsed manifest, paths resolved against ``base_dir``."""
    entries = [entry for section in SECTIONS for entry in manifest.get(section, [])]
    resolved = [
        {**entry, **{key: str(base_dir / entry[key]) for key in PATH_KEYS if key in entry}} for entry in entries
    ]
    return missing_files(resolved)


def ensure_study(manifest: str | os.PathLike, dataset_dir: str | os.PathLike | None = None) -> Path:
    """Make sure every file of ``manifest`` exists under ``dataset_dir``, regenerating a phantom study if needed.

    If files are missing and the manifest has a ``generator`` record whose ``module`` is ``pipeline.phantom``, the
    study is regenerated once with ``pipeline.phantom.generate_study(dataset_dir, **params)`` (params: the record
    without ``module``; generation is deterministic) and the regenerated manifest's datalists must equal the given
    ones (:class:`RuntimeError` otherwise). Missing files without a generator: :class:`MissingFilesError`.

    Args:
        manifest: path of the manifest (e.g. the top-level ``data_manifest.json``).
        dataset_dir: folder the manifest's relative paths point into; default: :func:`manifest_base_dir`.

    Returns:
        the dataset dir (absolute), ready for :func:`load_datalist`.
    """
    content = read_manifest(manifest)
    base_dir = manifest_base_dir(manifest, dataset_dir)
    missing = _manifest_missing_files(content, base_dir)
    if not missing:
        return base_dir
    generator = dict(content.get("generator") or {})
    if generator.pop("module", None) != "pipeline.phantom":
        raise _missing_files_error(
            f"manifest '{manifest}' has no pipeline.phantom generator record to regenerate files under '{base_dir}'",
            missing,
        )
    from pipeline.phantom import generate_study  # imported here: only needed (and slow to import) to regenerate

    written = generate_study(base_dir, **generator)
    regenerated = read_manifest(written)
    differing = [s for s in SECTIONS if regenerated.get(s) != content.get(s)]
    if differing:
        raise RuntimeError(
            f"regenerating the study of manifest '{manifest}' in '{base_dir}' with {generator} wrote a manifest "
            f"'{written}' whose {differing} lists differ from the given manifest's"
        )
    missing = _manifest_missing_files(content, base_dir)
    if missing:
        raise _missing_files_error(f"regenerated study in '{base_dir}' is incomplete", missing)
    return base_dir
