"""Does tissue values on the fly change a volume as the phantom's own re-simulation does? No training.

A study of re-simulated cases (``pipeline.phantom.changes``, e.g. the response benchmark's ``cases/``) holds the
unchanged subject and the same subject with one tissue's values scaled, each simulated with the full acquisition.
The unchanged case, processed as training processes it, is re-synthesised by
:class:`pipeline.data.tissue_values.TissueValueSynthesis` with each case's factors; both are compared by the mean
change (%) of each image channel and label over the voxels that are ≥ 95 % of the changed tissues.

With ``--checkpoint`` a trained model's maps are compared as well: the change of its predicted T1, T2 and M0 on the
re-simulated case and on the re-synthesis (the inputs training shows it). Equal changes that fall short of the
labels' mean the network reads values on its own training distribution no better than on the phantom's: the
shortfall is the network's, not a gap between training and test data. A third column gives the maps of the
re-simulated case with its FLAIR divided by the unchanged case's divisor (the FLAIR's 99th percentile in the brain
moves with a tissue's change; it is restored from the voxels of the other of white matter and cortex, which the
case leaves alone): what the FLAIR's normalisation costs this network.

Usage::

    python scripts/diagnose_tissue_values.py data/response_validation/cases/dataset.json \
        white_matter-t2_ms-x1.3 white_matter-t1_ms-x1.3 [--intensity_reference csf] [--checkpoint model.pt]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch
from monai.bundle import ConfigParser

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from pipeline.data import build_volume_dataset
from pipeline.data.manifest import IMAGE_KEYS, read_manifest
from pipeline.data.tissue_values import TissueValueSynthesis, crop_to_volume
from pipeline.engine import PrepareMapBatch
from pipeline.phantom.changes import subject_tissues
from pipeline.phantom.contrasts import protocol_overrides
from pipeline.phantom.tissues import COMPARTMENTS, scale_array, tissue_scales
from pipeline.reports.response import REFERENCE_CASE

BUNDLE = pathlib.Path(__file__).resolve().parents[1] / "bundles" / "qmap_hybrid"
PURE_FRACTION = 0.95
"""A voxel counts for a tissue when its compartment fractions of the changed tissues sum to at least this."""


def mean_change_pct(new, old, voxels: np.ndarray) -> list[float]:
    """Per channel of (3, X, Y, Z) volumes: 100 * (mean new / mean old - 1) over ``voxels``."""
    new, old = np.asarray(new), np.asarray(old)
    return [round(float(100 * (new[c][voxels].mean() / old[c][voxels].mean() - 1)), 1) for c in range(len(new))]


def flair_on_unchanged_divisor(
    case, reference, fractions: np.ndarray, changed: list[int], inside
) -> torch.Tensor | None:
    """(3, X, Y, Z) ``case``'s image with its FLAIR rescaled to ``reference``'s divisor: by the ratio of their FLAIR
    medians over the pure voxels of white matter or cortex, whichever the case left unchanged (None if both changed)."""
    unchanged = [COMPARTMENTS.index(name) for name in ("white_matter", "cortical_grey_matter")]
    unchanged = [k for k in unchanged if k not in changed]
    if not unchanged:
        return None
    voxels = (fractions[unchanged[0]] >= PURE_FRACTION) & inside
    image = torch.as_tensor(case["image"]).clone()
    flair = IMAGE_KEYS.index("flair")
    image[flair] *= float(
        np.median(np.asarray(reference["image"][flair])[voxels]) / np.median(np.asarray(image[flair])[voxels])
    )
    return image


class TrainedMaps:
    """A trained model's maps of a processed volume, as the bundle's ``inference.json`` builds the network and the
    inferer for ``checkpoint`` (its card's settings): ``(3, X, Y, Z)`` image -> ``(3, X, Y, Z)`` maps, network units."""

    def __init__(self, checkpoint: pathlib.Path) -> None:
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / "inference.json"))
        parser.update({"checkpoint": str(checkpoint), "bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
        self.network, self.inferer = parser.get_parsed_content("network"), parser.get_parsed_content("inferer")
        self.network.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        self.network.eval()
        self.prepare = PrepareMapBatch(
            label_key=None, with_acquired=False, mask_inputs=parser.get_parsed_content("mask_inputs")
        )
        self.intensity_reference = parser.get_parsed_content("intensity_reference")

    def __call__(self, image, mask) -> np.ndarray:
        batch = {"image": torch.as_tensor(image)[None], "mask": torch.as_tensor(mask)[None]}
        inputs, _ = self.prepare(batch, torch.device("cpu"))
        with torch.no_grad():
            return self.inferer(inputs, self.network)[0].float().numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=pathlib.Path, help="dataset.json of re-simulated cases")
    parser.add_argument("cases", nargs="+", help="case names (subjects of its testing section)")
    parser.add_argument("--intensity_reference", default="csf", help="the training's normalisation (csf)")
    parser.add_argument("--checkpoint", type=pathlib.Path, help="a trained model.pt: its maps' change as well")
    args = parser.parse_args(argv)
    model = TrainedMaps(args.checkpoint) if args.checkpoint else None
    if model is not None:
        args.intensity_reference = model.intensity_reference
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
    reference_maps = None if model is None else model(reference["image"], reference["mask"])
    print(
        "mean change (%) over pure voxels of the changed tissue: phantom re-simulation | tissue values on the fly"
        + (" | the re-simulation with its FLAIR on the unchanged divisor (maps)" if model is not None else "")
    )
    for case in args.cases:
        changed = [COMPARTMENTS.index(tissue) for tissue in record["cases"][case]]
        voxels = (fractions[changed].sum(0) >= PURE_FRACTION) & inside
        resynthesised = synthesis(scale_array(tissue_scales(record["cases"][case])))
        for key, names in (("image", "T1w, T2w, FLAIR"), ("label", "T1, T2, M0 labels")):
            print(
                f"{case:34s} {names:18s} {mean_change_pct(by_case[case][key], reference[key], voxels)} | "
                f"{mean_change_pct(resynthesised[key], reference[key], voxels)}"
            )
        if model is not None:
            case_maps, resynthesis_maps = (
                model(volume["image"], reference["mask"]) for volume in (by_case[case], resynthesised)
            )
            rescaled = flair_on_unchanged_divisor(by_case[case], reference, fractions, changed, inside)
            rescaled_change = (
                "-" if rescaled is None else mean_change_pct(model(rescaled, reference["mask"]), reference_maps, voxels)
            )
            print(
                f"{case:34s} {'T1, T2, M0 maps':18s} {mean_change_pct(case_maps, reference_maps, voxels)} | "
                f"{mean_change_pct(resynthesis_maps, reference_maps, voxels)} | {rescaled_change}"
            )


if __name__ == "__main__":
    main()
