"""The decathlon manifest of a BIDS dataset (:func:`write_manifest`): its sessions, their split, the maps in ms and
the sidecars' protocols; and the BIDS root a manifest records (:func:`bids_root_of`)."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence


from pipeline.bids import protocols as bids_protocols
from pipeline.bids.layout import MAP_SUFFIXES, WEIGHTED_SUFFIXES, BIDSSession, _strip, find_sessions, normalise_filters
from pipeline.bids.map_units import CACHE_DIR_NAME, convert_map_to_ms, map_units_factor, check_outside_dataset
from pipeline.bids.splits import assign_splits
from pipeline.data.errors import InvalidInputError
from pipeline.data.manifest import SECTIONS
from pipeline.files import write_atomically


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

    manifest = {
        "name": f"BIDS dataset {root.name}",
        "description": (
            f"Manifest of the BIDS dataset '{root}' written by pipeline.bids.write_manifest: weighted images in place, "
            "T1/T2 label maps converted from the BIDS seconds to ms in the cache folder, M0 maps in place."
        ),
        "map_units": {"t1_map": "ms", "t2_map": "ms", "m0_map": "a.u."},
        "bids_root": relative(root),
        **({"maps_dir": relative(maps_root)} if maps_root is not None else {}),
        "selection": _selection_record(runs, filters, participant_label),
        "split": _split_record(split, training, validation, testing),
        "protocols": protocols,
        **{section: [_manifest_entry(s, relative, cache, overwrite) for s in splits[section]] for section in SECTIONS},
    }
    _warn_invalid_protocols(out, protocols)
    write_atomically(out, json.dumps(manifest, indent=2) + "\n")
    return out


def _warn_invalid_protocols(out: pathlib.Path, protocols: Mapping[str, Mapping[str, float]]) -> None:
    """Warn (on :func:`write_manifest`'s caller) when the sidecars' protocols, completed with the defaults of the
    other fields, are invalid: a bundle config must then set the missing fields."""
    problems = bids_protocols.protocol_problems(protocols)
    if problems:
        import warnings

        warnings.warn(
            f"manifest '{out}': the sidecars' protocols with the defaults of the other fields are invalid, so a "
            f"bundle config must set the missing fields (pipeline.bids.resolve_protocols): {problems}",
            stacklevel=3,
        )


def _manifest_entry(session: BIDSSession, relative, cache: pathlib.Path, overwrite: bool) -> dict:
    """One session's manifest entry: its files (``relative`` paths; T1/T2 maps converted to ms into ``cache``) and
    its ``bids`` record."""
    entry = {"subject": session.name}
    entry.update({key: relative(session.files[key]) for key in WEIGHTED_SUFFIXES})
    if session.has_maps:
        for key in MAP_SUFFIXES:
            if key == "m0_map":
                entry[key] = relative(session.files[key])
                continue
            source = session.files[key]
            units, factor = map_units_factor(session.metadata.get(key, {}), key, session.name, str(source))
            target = cache / session.name / f"{key}.nii.gz"
            entry[key] = relative(convert_map_to_ms(source, target, factor, units, key, session.name, overwrite))
    entry["bids"] = {
        "subject": session.participant,
        **({"session": session.session} if session.session else {}),
        **session.relpaths,
        **({"maps_dataset": session.maps_dataset} if session.maps_dataset else {}),
    }
    return entry


def _selection_record(runs: str, filters, participant_label) -> dict:
    """How the files were chosen: the run rule, the filters and the participants."""
    labels = {"participant_label": sorted(_strip(p, "sub-") for p in participant_label)} if participant_label else {}
    return {"runs": runs, "filters": normalise_filters(filters), **labels}


def _split_record(split: str | None, training, validation, testing) -> dict:
    """How the datalists were made: a participants.tsv column, explicit lists, or the default (all testing)."""
    if split is not None:
        return {"participants_column": split}
    lists = {"training": training, "validation": validation, "testing": testing}
    if all(v is None for v in lists.values()):
        return {"default": "testing"}
    return {"lists": {k: sorted(_strip(p, "sub-") for p in v) for k, v in lists.items() if v}}


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
