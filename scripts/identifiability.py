"""What can the three images tell about a tissue's T1, T2 and PD? The sensitivity of each image to each parameter.

For each compartment of a phantom subject the script prints the Jacobian ``d log S_c / d log p`` of the study's
own acquisition (:class:`pipeline.phantom.acquisition.CompartmentSignals`: MPRAGE readout, TSE and SPACE echo
trains at nominal B1+, no texture) by central differences, its singular values and the direction of the smallest
one: the change of (T1, T2, PD) that moves the images least. A network (or a dictionary fit) that cannot resolve
that direction at the images' noise answers with its prior along it; the response benchmark's cross-talk shows
where it did. With ``--split`` the images' change of a predicted split of a pure change (e.g. the slopes and
cross-talk a model gave for T2) is printed beside the true change's.

Usage::

    python scripts/identifiability.py data/response_validation/cases/dataset.json [--split 0.2 0.75 0.18]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from pipeline.data.manifest import read_manifest
from pipeline.phantom.acquisition import CompartmentSignals
from pipeline.phantom.changes import subject_tissues
from pipeline.phantom.contrasts import CONTRASTS, protocol_overrides
from pipeline.phantom.tissues import COMPARTMENTS, TISSUE_PARAMETERS

STEP = 0.01
"""Relative step of the central differences."""


def compartment_signals(tissues, values: np.ndarray, overrides) -> np.ndarray:
    """(C, K) |image intensity| of each contrast and compartment of (K, 3) ``values``, nominal B1+, no texture."""
    no_texture = np.zeros(len(values))
    tables = [
        CompartmentSignals.tabulate(c, tissues.acquisition, values, no_texture, None, overrides) for c in CONTRASTS
    ]
    at_centre = torch.zeros(1)
    return np.abs([[float(t.lookup(k, at_centre, None)[0]) for k in range(len(values))] for t in tables])


def log_jacobian(tissues, overrides, compartment: int) -> np.ndarray:
    """(C, 3) ``d log S_c / d log p`` of one compartment for p = T1, T2, PD (central differences)."""
    values = tissues.values.astype(np.float64)
    columns = []
    for parameter in range(len(TISSUE_PARAMETERS)):
        up, down = values.copy(), values.copy()
        up[compartment, parameter] *= 1 + STEP
        down[compartment, parameter] *= 1 - STEP
        change = np.log(compartment_signals(tissues, up, overrides) / compartment_signals(tissues, down, overrides))
        columns.append(change[:, compartment] / np.log((1 + STEP) / (1 - STEP)))
    return np.stack(columns, axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=pathlib.Path, help="a phantom study's or its re-simulated cases' dataset.json")
    parser.add_argument("--subject_index", type=int, help="phantom subject (default: the cases' subject, else 0)")
    parser.add_argument("--compartments", nargs="+", default=["white_matter", "cortical_grey_matter"])
    parser.add_argument("--split", nargs=3, type=float, help="a predicted (T1, T2, PD) response to a pure T2 change")
    args = parser.parse_args(argv)
    manifest = read_manifest(args.manifest)
    record = manifest.get("tissue_changes", {})
    generator = record.get("generator") or manifest["generator"]
    index = args.subject_index if args.subject_index is not None else record.get("subject_index", 0)
    tissues = subject_tissues(generator, index)
    overrides = protocol_overrides(generator.get("protocols"))
    print(f"subject {index}; rows: {', '.join(CONTRASTS)}; columns: d log S / d log (T1, T2, PD)")
    for name in args.compartments:
        jacobian = log_jacobian(tissues, overrides, COMPARTMENTS.index(name))
        _, singular, directions = np.linalg.svd(jacobian)
        weakest = directions[-1] * np.sign(directions[-1][1] or 1.0)  # T2 up
        print(f"\n{name}\n{np.array2string(jacobian, precision=3, suppress_small=True)}")
        print(
            f"singular values {np.round(singular, 3)}; the images move least along (T1, T2, PD) {np.round(weakest, 2)}"
        )
        if args.split:
            print(
                f"images' log change of T2 x e: {np.round(jacobian @ [0.0, 1.0, 0.0], 3)}; "
                f"of the split {args.split}: {np.round(jacobian @ np.asarray(args.split), 3)}"
            )


if __name__ == "__main__":
    main()
