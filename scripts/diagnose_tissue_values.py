"""Does tissue values on the fly change a volume as the phantom's own re-simulation does? No training.

A study of re-simulated cases (``pipeline.phantom.changes``, e.g. the response benchmark's ``cases/``) holds the
unchanged subject and the same subject with one tissue's values scaled, each simulated with the full acquisition.
The unchanged case, processed as training processes it, is re-synthesised by
:class:`pipeline.data.tissue_values.TissueValueSynthesis` with each case's factors; both are compared by the mean
change (%) of each image channel and label over the voxels that are ≥ 95 % of the changed tissues.

Usage::

    python scripts/diagnose_tissue_values.py data/response_validation/cases/dataset.json \
        white_matter-t2_ms-x1.3 white_matter-t1_ms-x1.3 [--intensity_reference csf]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from pipeline.data import build_volume_dataset
from pipeline.data.manifest import read_manifest
from pipeline.data.tissue_values import TissueValueSynthesis, crop_to_volume
from pipeline.phantom.changes import subject_tissues
from pipeline.phantom.contrasts import protocol_overrides
from pipeline.phantom.tissues import COMPARTMENTS, scale_array, tissue_scales
from pipeline.reports.response import REFERENCE_CASE

PURE_FRACTION = 0.95
"""A voxel counts for a tissue when its compartment fractions of the changed tissues sum to at least this."""


def mean_change_pct(new, old, voxels: np.ndarray) -> list[float]:
    """Per channel of (3, X, Y, Z) volumes: 100 * (mean new / mean old - 1) over ``voxels``."""
    new, old = np.asarray(new), np.asarray(old)
    return [round(float(100 * (new[c][voxels].mean() / old[c][voxels].mean() - 1)), 1) for c in range(len(new))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=pathlib.Path, help="dataset.json of re-simulated cases")
    parser.add_argument("cases", nargs="+", help="case names (subjects of its testing section)")
    parser.add_argument("--intensity_reference", default="csf", help="the training's normalisation (csf)")
    args = parser.parse_args(argv)
    record = read_manifest(args.manifest)["tissue_changes"]
    generator = record["generator"]
    folder = args.manifest.parent
    entries = {entry["subject"]: entry for entry in read_manifest(args.manifest)["testing"]}
    names = (REFERENCE_CASE, *args.cases)
    resolved = [
        {key: value if key == "subject" else str(folder / value) for key, value in entries[name].items()}
        for name in names
    ]
    volumes = build_volume_dataset(
        resolved, section="testing", cache_num=0, intensity_reference=args.intensity_reference
    )
    by_case = dict(zip(names, (volumes[i] for i in range(len(names)))))
    reference = by_case[REFERENCE_CASE]
    tissues = subject_tissues(generator, record["subject_index"])
    synthesis = TissueValueSynthesis(
        tissues,
        reference,
        protocol_overrides(generator.get("protocols")),
        generator["slab_axis"],
        generator["slab_thickness_mm"],
        args.intensity_reference,
    )
    fractions = crop_to_volume(tissues.fractions, tissues.affine, reference["image"])
    inside = np.asarray(reference["mask"])[0] > 0
    print("mean change (%) over pure voxels of the changed tissue: phantom re-simulation | tissue values on the fly")
    for case in args.cases:
        changed = [COMPARTMENTS.index(tissue) for tissue in record["cases"][case]]
        voxels = (fractions[changed].sum(0) >= PURE_FRACTION) & inside
        resynthesised = synthesis(scale_array(tissue_scales(record["cases"][case])))
        for key, names in (("image", "T1w, T2w, FLAIR"), ("label", "T1, T2, M0 labels")):
            print(
                f"{case:34s} {names:18s} {mean_change_pct(by_case[case][key], reference[key], voxels)} | "
                f"{mean_change_pct(resynthesised[key], reference[key], voxels)}"
            )


if __name__ == "__main__":
    main()
