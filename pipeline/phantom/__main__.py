"""Command line: ``python -m pipeline.phantom --out DIR [--acquisition realistic [--without EFFECT ...]] ...``.

``--bids`` writes instead the small BIDS test dataset of :mod:`pipeline.phantom.bids` (3 phantom subjects as sub-01
and sub-02 ses-01/ses-02; ``--subjects``, ``--label-thickness``, ``--slab-axis``, ``--no-lesions``, ``--figure`` do
not apply).

``--protocol CONTRAST.FIELD=VALUE`` (repeatable) images the study with another site's protocol, e.g.
``--protocol tse.te=120 --protocol flair.ti=2000``.

``--tissue-scale COMPARTMENT.PARAMETER=FACTOR`` (repeatable) re-simulates the same study with a tissue's nominal T1, T2
or PD scaled, e.g. ``--tissue-scale white_matter.t2_ms=1.2`` (:func:`pipeline.phantom.tissues.tissue_scales`).

Writes the study (``DIR/dataset.json`` and one folder per subject) and optionally a PNG of one sagittal
slice set of its testing subject. The default arguments give the default study of data_manifest.json.
"""

from __future__ import annotations

import argparse
import time

from pipeline.cli import field_assignment, overrides_of
from pipeline.phantom.acquisition import Acquisition, check_protocols
from pipeline.phantom.contrasts import CONTRASTS, protocol_overrides
from pipeline.phantom.figure import save_slice_figure
from pipeline.phantom.study import DEFAULT_SNR, generate_study
from pipeline.phantom.tissues import COMPARTMENTS, TISSUE_PARAMETERS, tissue_scales


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m pipeline.phantom``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.phantom", description="Generate the digital brain phantom study."
    )
    parser.add_argument("--out", required=True, help="dataset folder to write (dataset.json + sub-XX/)")
    parser.add_argument(
        "--subjects", type=int, default=5, help="number of subjects (last: testing, one before: validation)"
    )
    parser.add_argument("--seed", type=int, default=0, help="study seed")
    parser.add_argument("--snr", type=float, default=DEFAULT_SNR, help="nominal white-matter intensity / noise sigma")
    parser.add_argument("--sagittal-slices", type=int, default=None, help="keep only N sagittal planes (fast tests)")
    parser.add_argument(
        "--label-thickness",
        "--slab-thickness-mm",
        dest="slab_thickness_mm",
        type=float,
        default=3.5,
        metavar="MM",
        help="thickness (mm) of the label slabs along --slab-axis (3.5: the paper's labels)",
    )
    parser.add_argument("--slab-axis", type=int, default=2, choices=(0, 1, 2), help="label slab axis (2: S-I)")
    parser.add_argument("--no-lesions", action="store_true", help="simulate without white-matter lesions")
    parser.add_argument(
        "--acquisition",
        default="ideal",
        choices=("ideal", "realistic"),
        help="ideal: the loss's own signal equations; realistic: scanner effects (pipeline.phantom.acquisition)",
    )
    parser.add_argument(
        "--without",
        nargs="+",
        default=[],
        choices=Acquisition.effects(),
        metavar="EFFECT",
        help=f"switch these effects of the realistic acquisition off: {', '.join(Acquisition.effects())}",
    )
    parser.add_argument(
        "--protocol",
        action="append",
        default=[],
        type=field_assignment,
        metavar="CONTRAST.FIELD=VALUE",
        help=f"override a field of a contrast's protocol ({', '.join(CONTRASTS)}; fields of pipeline.physics' "
        "MPRAGEProtocol, TSEProtocol, FLAIRProtocol; ms, degrees), e.g. tse.te=120; repeatable",
    )
    parser.add_argument(
        "--tissue-scale",
        action="append",
        default=[],
        type=field_assignment,
        metavar="COMPARTMENT.PARAMETER=FACTOR",
        help=f"scale a compartment's nominal value ({', '.join(COMPARTMENTS)}; {', '.join(TISSUE_PARAMETERS)}) in "
        "every subject, all else the same, e.g. white_matter.t2_ms=1.2; repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a different study in --out")
    parser.add_argument(
        "--bids", action="store_true", help="write the BIDS test dataset (pipeline.phantom.bids) into --out instead"
    )
    parser.add_argument("--figure", default=None, help="also write a PNG of one sagittal slice set here")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    acquisition = Acquisition.preset(args.acquisition, args.without)
    try:
        protocols = protocol_overrides(overrides_of(args.protocol))
        check_protocols(acquisition, protocols)
        scales = tissue_scales(overrides_of(args.tissue_scale))
    except ValueError as error:
        parser.error(str(error))

    start = time.perf_counter()
    if args.bids:
        from pipeline.phantom.bids import write_bids_study

        root = write_bids_study(
            args.out,
            args.seed,
            args.sagittal_slices,
            snr=args.snr,
            acquisition=acquisition,
            protocols=protocols,
            overwrite=args.overwrite,
        )
        print(f"wrote the BIDS dataset {root} in {time.perf_counter() - start:.1f} s")
        return
    manifest = generate_study(
        args.out,
        n_subjects=args.subjects,
        seed=args.seed,
        snr=args.snr,
        sagittal_slices=args.sagittal_slices,
        slab_thickness_mm=args.slab_thickness_mm,
        slab_axis=args.slab_axis,
        lesions=not args.no_lesions,
        acquisition=acquisition,
        protocols=protocols,
        tissue_scales=scales,
        overwrite=args.overwrite,
    )
    print(f"wrote {manifest} in {time.perf_counter() - start:.1f} s")
    if args.figure:
        print(f"wrote {save_slice_figure(manifest, args.figure)}")


if __name__ == "__main__":
    main()
