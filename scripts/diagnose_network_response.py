"""Does a trained model read tissue values on the data it was trained on? Its response on a re-synthesised subject.

One subject of a phantom study (a training subject by default: what the model saw, with other values) is
re-synthesised by :class:`pipeline.data.tissue_values.TissueValueSynthesis`, the re-synthesis training uses, with one
tissue's T1 or T2 scaled, and with a tissue's texture made stronger for T1, T2 or PD alone or for all three. The
model's maps are compared with its maps of the subject as it is, over the voxels that are >= 95 % of the tissue:

* a scaled value: the mean change (%) of the labels and of the predicted T1, T2 and M0;
* a stronger texture: each predicted map's log change regressed on the log change of the textured parameter's label
  (1: the map follows it; the others: how much of it leaks into them).

A model that falls short here as on the response benchmark's re-simulated subjects falls short on its own training
distribution: the images carry the change, the network does not read it.

Usage::

    python scripts/diagnose_network_response.py runs/X/models/model.pt \
        [--datalist data/phantom_realistic/dataset.json] [--section training] [--index 0]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1]), str(pathlib.Path(__file__).resolve().parent)]
from diagnose_tissue_values import PURE_FRACTION, TrainedMaps, mean_change_pct

from pipeline.data import build_volume_dataset
from pipeline.data.tissue_values import TissueValueSampler
from pipeline.phantom.simulate import texture_cvs
from pipeline.phantom.tissues import (
    COMPARTMENTS,
    TISSUE_PARAMETERS,
    scale_array,
    tissue_scales,
)

VALUE_CASES = (
    (("white_matter",), "t2_ms"),
    (("cortical_grey_matter",), "t2_ms"),
    (("white_matter", "cortical_grey_matter"), "t2_ms"),
    (("white_matter",), "t1_ms"),
    (("white_matter", "cortical_grey_matter"), "t1_ms"),
)
"""(tissues, parameter) scaled by ``--factor`` together."""
TEXTURE_CASES = {"all three": (3, 3, 3), "T1": (3, 1, 1), "T2": (1, 3, 1), "PD": (1, 1, 3)}
"""White matter's texture CV multiplied, per parameter (T1, T2, PD)."""


def pure_voxels(synthesis, names, inside: np.ndarray) -> np.ndarray:
    """(X, Y, Z) voxels inside the mask whose fractions of the compartments ``names`` sum to >= PURE_FRACTION."""
    fraction = np.zeros(int(np.prod(synthesis.shape)), np.float32)
    for name in names:
        k = COMPARTMENTS.index(name)
        fraction[synthesis.present[k]] += synthesis.fractions[k]
    return (fraction.reshape(synthesis.shape) >= PURE_FRACTION) & inside


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=pathlib.Path)
    parser.add_argument("--datalist", type=pathlib.Path, default=pathlib.Path("data/phantom_realistic/dataset.json"))
    parser.add_argument("--section", default="training")
    parser.add_argument("--index", type=int, default=0, help="the subject's place in the section")
    parser.add_argument("--factor", type=float, default=1.3)
    args = parser.parse_args(argv)
    model = TrainedMaps(args.checkpoint)
    volumes = build_volume_dataset(
        args.datalist, section=args.section, cache_num=-1, intensity_reference=model.intensity_reference
    )
    volume = volumes[args.index]
    synthesis = TissueValueSampler([volume], args.datalist, intensity_reference=model.intensity_reference).syntheses[0]
    inside = np.asarray(volume["mask"])[0] > 0
    unchanged = synthesis(np.ones((len(COMPARTMENTS), len(TISSUE_PARAMETERS))))
    unchanged_maps = model(unchanged["image"], volume["mask"])
    print(f"{args.section} subject {args.index}: mean change (%) of (T1, T2, M0), labels | the model's maps")
    for names, parameter in VALUE_CASES:
        voxels = pure_voxels(synthesis, names, inside)
        changed = synthesis(scale_array(tissue_scales({name: {parameter: args.factor} for name in names})))
        maps = model(changed["image"], volume["mask"])
        print(
            f"{' + '.join(names):40s} {parameter} x{args.factor:g}: "
            f"{mean_change_pct(changed['label'], unchanged['label'], voxels)} | "
            f"{mean_change_pct(maps, unchanged_maps, voxels)}"
        )
    print("white matter's texture x3: each map's log change regressed on the textured label's (T1, T2, M0)")
    voxels = pure_voxels(synthesis, ("white_matter",), inside)
    white = COMPARTMENTS.index("white_matter")
    for name, multipliers in TEXTURE_CASES.items():
        texture_cv = np.repeat(texture_cvs()[:, None], len(TISSUE_PARAMETERS), axis=1)
        texture_cv[white] *= multipliers
        changed = synthesis(np.ones((len(COMPARTMENTS), len(TISSUE_PARAMETERS))), texture_cv)
        label_change = np.log(np.asarray(changed["label"])[:, voxels] / np.asarray(unchanged["label"])[:, voxels])
        map_change = np.log(model(changed["image"], volume["mask"])[:, voxels] / unchanged_maps[:, voxels])
        regressor = label_change[int(np.argmax(multipliers))]
        slopes = map_change @ regressor / (regressor @ regressor)
        print(f"texture of {name:9s}: {[round(float(slope), 2) for slope in slopes]}")


if __name__ == "__main__":
    main()
