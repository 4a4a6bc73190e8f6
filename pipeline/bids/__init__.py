"""BIDS in and out: a BIDS dataset as the pipeline's manifest, sidecar protocols, and the maps as BIDS derivatives.

One concept per module:

* :mod:`~pipeline.bids.layout` -- discovering a BIDS dataset's sessions (pybids): T1w/T2w/FLAIR and T1map/T2map/M0map
  per subject and session, the file selection rules (:func:`find_sessions`).
* :mod:`~pipeline.bids.splits` -- the sessions' training / validation / testing split, per participant.
* :mod:`~pipeline.bids.map_units` -- T1/T2 maps converted from s (the sidecar's ``Units``) to ms into a cache.
* :mod:`~pipeline.bids.manifest` -- all of it as a decathlon manifest (:func:`write_manifest`), with the sidecars'
  protocols.
* :mod:`~pipeline.bids.protocols` -- sidecar parameters (s, degrees) → protocol overrides (ms, degrees), one per
  contrast for the dataset; :func:`resolve_protocols` merges them with a bundle config's for the loss / QC.
* :mod:`~pipeline.bids.derivatives` -- predicted maps → qMRI-BIDS derivative dataset (:func:`write_derivatives`).

Command line: ``python -m pipeline.bids manifest|derivatives ...`` (see ``--help``).
"""

from pipeline.bids.derivatives import is_valid_derivative_path, write_derivatives
from pipeline.bids.layout import BIDSSession, find_sessions
from pipeline.bids.manifest import bids_root_of, write_manifest
from pipeline.bids.protocols import resolve_protocols, sidecar_protocol

__all__ = [
    "BIDSSession",
    "bids_root_of",
    "find_sessions",
    "is_valid_derivative_path",
    "resolve_protocols",
    "sidecar_protocol",
    "write_derivatives",
    "write_manifest",
]
