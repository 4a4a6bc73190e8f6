"""Plausibility of predicted maps: median T1 and T2 per tissue class against published 3 T values.

Published relaxation times of healthy adult brain at 3 T (pure tissue, region-of-interest means):

=================  ======================  ====================  ======================================
tissue             T1 (ms)                 T2 (ms)               sources
=================  ======================  ====================  ======================================
white matter       832 ± 10; 1084 ± 45      79.6 ± 0.6; 69 ± 3    Wansapura 1999; Stanisz 2005
grey matter        1331 ± 13; 1820 ± 114    110 ± 2; 99 ± 7       Wansapura 1999; Stanisz 2005
CSF                3800–4300                ~500–2000             Lu 2005 (T1); long-TE reports (T2)
=================  ======================  ====================  ======================================

* Wansapura JP, Holland SK, Dunn RS, Ball WS. NMR relaxation times in the human brain at 3.0 tesla.
  J Magn Reson Imaging 1999;9:531-538.
* Stanisz GJ, Odrobina EE, Pun J, et al. T1, T2 relaxation and magnetization transfer in tissue at 3T.
  Magn Reson Med 2005;54:507-512.
* Lu H, Nagae-Poetscher LM, Golay X, et al. Routine clinical brain MRI sequences for use at 3.0 Tesla.
  J Magn Reson Imaging 2005;22:13-22.

:data:`PUBLISHED_RANGES_3T` spans these reports with a margin, because a class median of a whole brain is not a
pure-tissue ROI: the classes of :func:`pipeline.qc.tissues.segment_tissues` hold partial-volume voxels, lesions and
deep grey matter. CSF suffers most: most of its class is sulcal CSF sharing voxels with grey matter, so its median
sits far below pure CSF (the phantom's exact maps: T1 ~3200 ms and T2 ~600 ms over a whole brain, ~1900 ms and
~200 ms over 16 lateral sagittal planes), and its range only catches gross errors (e.g. swapped inputs). A median outside its range is flagged; a user with another field strength or population passes their
own ``ranges``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.qc.tissues import TISSUE_CLASSES

PUBLISHED_RANGES_3T = {
    "t1": {"white_matter": (700.0, 1200.0), "grey_matter": (1100.0, 2000.0), "csf": (1500.0, 5500.0)},
    "t2": {"white_matter": (55.0, 95.0), "grey_matter": (75.0, 125.0), "csf": (150.0, 3000.0)},
}
"""``{map: {tissue: (low, high) ms}}``: plausible class medians of healthy adult brain at 3 T (module docstring)."""
MAP_CHANNELS = {"t1": 0, "t2": 1}
"""Map name → channel of the (T1, T2, M0) maps."""
TISSUE_NAMES = {"csf": "CSF", "grey_matter": "grey-matter", "white_matter": "white-matter"}


def tissue_medians(maps_ms: np.ndarray, tissues: np.ndarray) -> dict:
    """``{map: {tissue: median (ms)}}`` of the T1 and T2 maps (3, X, Y, Z) over each class of ``tissues`` (X, Y, Z).

    A class without voxels gives NaN.
    """
    return {
        name: {
            tissue: float(np.median(maps_ms[channel][tissues == label])) if (tissues == label).any() else float("nan")
            for label, tissue in TISSUE_CLASSES.items()
        }
        for name, channel in MAP_CHANNELS.items()
    }


def plausibility_flags(medians: Mapping, ranges: Mapping = PUBLISHED_RANGES_3T) -> list[dict]:
    """One flag dict per class median of ``medians`` outside (or NaN against) its ``ranges`` entry."""
    flags = []
    for name, by_tissue in ranges.items():
        for tissue, (low, high) in by_tissue.items():
            value = medians[name][tissue]
            if not low <= value <= high:  # NaN fails too
                flags.append(
                    {
                        "check": "plausibility",
                        "map": name,
                        "tissue": tissue,
                        "value": value,
                        "range": [low, high],
                        "message": f"{TISSUE_NAMES[tissue]} median {name.upper()} {value:.0f} ms outside the "
                        f"published 3 T range {low:g}-{high:g} ms",
                    }
                )
    return flags
