"""``python -m pipeline.qc``: QC of maps already on disk (any method's), with the checks inference runs.

``check MANIFEST --maps DIR``: for every subject of a manifest section, reads ``DIR/<subject>/{t1,t2,m0}_map.nii.gz``
(ms) and the subject's inputs and writes ``qc.json`` and ``report.html`` beside the maps, and ``DIR/index.html``;
exit code 1 if any subject is flagged. ``calibrate MANIFEST --maps DIR --out qc_calibration.json``: the same on
validation subjects, then their thresholds.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from monai.data import MetaTensor

from pipeline.cli import field_assignment, overrides_of
from pipeline.data import build_volume_dataset, load_datalist
from pipeline.engine import MAP_NAMES
from pipeline.qc.calibration import DEFAULT_MARGIN
from pipeline.qc.transforms import (
    SubjectQCd,
    calibrate_directory,
    load_on_grid,
    read_reports,
    write_run_index,
)


def check_maps(args: argparse.Namespace, calibration: str | None) -> list[str]:
    """Run :class:`SubjectQCd` over the maps of ``args.maps`` for every subject of ``args.section``; returns the
    flagged subjects."""
    volumes = build_volume_dataset(
        args.manifest, args.dataset_dir, args.section, with_labels=False, with_reference=False, cache_num=0
    )
    qc = SubjectQCd(
        "pred",
        args.maps,
        contrasts=args.contrasts,
        protocols=overrides_of(args.protocol),
        calibration=calibration,
        datalist=args.manifest,
        dataset_dir=args.dataset_dir,
        section=args.section,
        overwrite=args.overwrite,
    )
    for volume in volumes:
        grid = volume["image"]
        maps = np.stack([load_on_grid(args.maps / volume["subject"] / f"{name}.nii.gz", grid) for name in MAP_NAMES])
        qc({**volume, "pred": MetaTensor(maps, affine=grid.affine)})
    print(write_run_index(args.maps))
    subjects = {volume["subject"] for volume in volumes}
    return [
        report["subject"] for report in read_reports(args.maps) if report["flagged"] and report["subject"] in subjects
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.qc", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, section in (("check", "testing"), ("calibrate", "validation")):
        command = commands.add_parser(name)
        command.add_argument("manifest", help="decathlon-style manifest (dataset.json)")
        command.add_argument(
            "--maps", type=pathlib.Path, required=True, help="folder of <subject>/{t1,t2,m0}_map.nii.gz"
        )
        command.add_argument("--dataset-dir", default=None, help="root of the manifest's paths (its folder)")
        command.add_argument("--section", default=section, help=f"manifest section ({section})")
        command.add_argument("--contrasts", nargs="+", default=["mprage", "tse_epg"], help="re-synthesised contrasts")
        command.add_argument("--overwrite", action="store_true", help="replace existing qc.json / report.html")
        command.add_argument(
            "--protocol",
            action="append",
            default=[],
            type=field_assignment,
            metavar="CONTRAST.FIELD=VALUE",
            help="the protocol in force, where it differs from the defaults (e.g. tse_epg.te=120)",
        )
    commands.choices["check"].add_argument("--calibration", default=None, help="qc_calibration.json of the model")
    commands.choices["calibrate"].add_argument("--out", type=pathlib.Path, required=True, help="calibration to write")
    commands.choices["calibrate"].add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    args = parser.parse_args(argv)
    if args.command == "calibrate":
        check_maps(args, calibration=None)
        subjects = [entry["subject"] for entry in load_datalist(args.manifest, args.section, args.dataset_dir)]
        print(calibrate_directory(args.maps, args.out, args.margin, overwrite=args.overwrite, subjects=subjects))
        return 0
    flagged = check_maps(args, calibration=args.calibration)
    print(f"{len(flagged)} flagged subject(s){': ' + ', '.join(flagged) if flagged else ''}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
