"""Command line: a BIDS dataset → manifest, and predicted maps → BIDS derivatives.

``python -m pipeline.bids manifest BIDS_ROOT --out manifest.json [--maps DERIVATIVES_DIR] [--participant-label 01 ...]
[--split COLUMN | --training 01 ... --validation ... --testing ...] [--runs error|highest]
[--filter SUFFIX:ENTITY=VALUE ...] [--cache-dir DIR] [--overwrite]``

``python -m pipeline.bids derivatives PREDICTIONS_DIR MANIFEST [--out DIR] [--checkpoint PATH] [--overwrite]``

Exit status: 0 on success, 2 on usage errors (argparse), 1 on data errors (missing or invalid files, contradicting
sidecars, files that would be overwritten); the message names the subject, the file and the problem.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.data.errors import InvalidInputError, MissingFilesError

DATA_ERRORS = (InvalidInputError, MissingFilesError, FileExistsError, FileNotFoundError)
"""Errors reported as data errors (exit status 1)."""


def filter_argument(text: str) -> tuple[str, str, str]:
    """``(suffix, entity, value)`` of one ``SUFFIX:ENTITY=VALUE`` argument (argparse ``type``)."""
    suffix, colon, rest = text.partition(":")
    entity, equals, value = rest.partition("=")
    if not (colon and equals and suffix and entity and value):
        raise argparse.ArgumentTypeError(f"expected SUFFIX:ENTITY=VALUE (e.g. T1w:acq=mprage), got {text!r}")
    return suffix.strip(), entity.strip(), value.strip()


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its sub-command parsers (``manifest``, ``derivatives``)."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bids", description="BIDS datasets in (manifest) and out (derivatives)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    manifest = commands.add_parser(
        "manifest",
        help="write the decathlon manifest of a BIDS dataset",
        description="Write the manifest of a BIDS dataset: T1w/T2w/FLAIR (+ T1map/T2map/M0map) per subject and "
        "session; T1/T2 maps converted from s to ms into a cache beside the manifest; sidecar protocols.",
    )
    manifest.add_argument("bids_root", metavar="BIDS_ROOT", help="the raw BIDS dataset (read only)")
    manifest.add_argument("--out", required=True, help="manifest JSON to write (outside BIDS_ROOT or in derivatives/)")
    manifest.add_argument("--maps", default=None, metavar="DERIVATIVES_DIR", help="dataset holding the label maps")
    manifest.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL", help="only these")
    manifest.add_argument("--split", default=None, metavar="COLUMN", help="participants.tsv column of the datalists")
    for section in ("training", "validation", "testing"):
        manifest.add_argument(f"--{section}", nargs="+", default=None, metavar="LABEL", help=f"{section} participants")
    manifest.add_argument(
        "--runs", default="error", choices=("error", "highest"), help="files differing only in run-: error or highest"
    )
    manifest.add_argument(
        "--filter",
        action="append",
        default=[],
        type=filter_argument,
        metavar="SUFFIX:ENTITY=VALUE",
        help="keep only files with this entity, e.g. T1w:acq=mprage; repeatable",
    )
    manifest.add_argument("--cache-dir", default=None, help="folder of the ms maps (default: maps_ms/ beside --out)")
    manifest.add_argument("--overwrite", action="store_true", help="replace an existing manifest")

    derivatives = commands.add_parser(
        "derivatives",
        help="write predicted maps as a BIDS derivative dataset",
        description="Write the inference's maps (ms) as qMRI-BIDS T1map/T2map (s) and M0map with sidecars.",
    )
    derivatives.add_argument("predictions_dir", metavar="PREDICTIONS_DIR", help="the inference's output_dir")
    derivatives.add_argument("manifest", metavar="MANIFEST", help="the manifest written by 'manifest'")
    derivatives.add_argument("--out", default=None, help="derivative dataset (BIDS_ROOT/derivatives/qmap-hybrid)")
    derivatives.add_argument("--checkpoint", default=None, help="model checkpoint whose SHA-256 is recorded")
    derivatives.add_argument("--overwrite", action="store_true", help="replace existing derivative files")
    return parser, {"manifest": manifest, "derivatives": derivatives}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse exits with 2 on usage errors)."""
    parser, commands = _parser()
    args = parser.parse_args(argv)
    command = commands[args.command]
    from pipeline.bids.derivatives import write_derivatives  # imported after parsing: --help stays fast
    from pipeline.bids.manifest import write_manifest

    try:
        if args.command == "manifest":
            lists = {section: getattr(args, section) for section in ("training", "validation", "testing")}
            if args.split is not None and any(value is not None for value in lists.values()):
                command.error("give either --split or --training/--validation/--testing, not both")
            filters: dict[str, dict[str, str]] = {}
            for suffix, entity, value in args.filter:
                filters.setdefault(suffix, {})[entity] = value
            try:
                path = write_manifest(
                    args.bids_root,
                    args.out,
                    maps_dir=args.maps,
                    participant_label=args.participant_label,
                    split=args.split,
                    runs=args.runs,
                    filters=filters,
                    cache_dir=args.cache_dir,
                    overwrite=args.overwrite,
                    **lists,
                )
            except ValueError as error:
                if isinstance(error, InvalidInputError):
                    raise
                command.error(str(error))  # bad arguments (filters, folders inside the dataset): usage error
            print(f"wrote {path}")
        else:
            out = write_derivatives(
                args.predictions_dir, args.manifest, args.out, checkpoint=args.checkpoint, overwrite=args.overwrite
            )
            print(f"wrote {out}")
    except DATA_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
