"""Signal models that turn T1/T2/M0 maps into MPRAGE, TSE and FLAIR weighted images.

One module per concept: :mod:`.units` (ms, the 3 s map unit, numpy/torch plumbing), :mod:`.protocols`,
:mod:`.mprage_signal`, :mod:`.spin_echo` (TSE), :mod:`.flair_signal`, :mod:`.epg` (echo trains) and :mod:`.registry`
(contrast names). Everything public is imported here: ``from pipeline.physics import ...`` is the interface.

Conventions (see ``docs/architecture.md``):

* Every function here takes T1 and T2 in **milliseconds** and M0 in arbitrary units. Inputs may be
  Python floats, numpy arrays or torch tensors of any broadcastable shapes; the result has the
  broadcast shape. Torch in gives torch out (differentiable, same device, floating dtype kept,
  integer tensors become ``torch.get_default_dtype()``); otherwise numpy out (float32 kept, anything
  else float64). Signals are magnitudes (>= 0).
* The network works in units of 3 s (the paper divides T1 and T2 by 3 s): a map value ``v`` means
  ``v * MAP_UNIT_MS`` ms. The network's raw outputs are made positive with a softplus in those units
  (``pipeline/engine.py``), so a freshly initialised network can hand this module T1/T2 close to 0 ms.
  To keep values and gradients finite there, T1 and T2 are clamped to at least
  ``RELAXATION_FLOOR_MS`` = 1 ms inside every model (the clamp has zero gradient below the floor).
  For T1, T2 in [1 ms, 10 s] and M0 >= 0 all values and gradients are finite.
* Protocol parameters live in frozen, serialisable dataclasses whose defaults are the paper's
  Table 1 (values the paper does not report carry documented assumptions). Invalid timing raises a
  ``ValueError`` naming the offending values when the protocol is built.

Models:

* :func:`mprage` -- steady-state MPRAGE (Deichmann et al. 2000, MRM 44:130; Wang et al. 2014,
  PLoS ONE 9:e96899), closed form by geometric series.
* :func:`tse` -- the paper's simplified turbo spin echo model (ideal 180 deg refocusing).
* :func:`flair` -- inversion-recovery TSE, simplified in the same way.
* :func:`tse_epg` -- the TSE centre echo from an extended phase graph CPMG train with the protocol's
  refocusing angle (Weigel 2015, JMRI 41:266).
* Whole trains, for acquisitions that place them across k-space (the phantom's realistic acquisition):
  :func:`mprage_readout` (every excitation of the MPRAGE readout), :func:`cpmg_echo_train` (EPG echo
  amplitudes for constant or variable refocusing angles), :func:`tse_echo_train`,
  :func:`inversion_recovery` and :func:`flair_echo_train`. The single-value models above are these
  trains' k-space-centre values, computed by the same code.
* :func:`tse_epg_tabulated` -- :func:`tse_epg` through a table of its echo amplitude over (T1, T2) that the same
  EPG code fills once per protocol: what the loss's ``tse_epg`` contrast uses (~300x faster with gradients).
* :func:`synthesize` / ``SIGNAL_MODELS`` -- look a model up by contrast name with one call signature.
"""

from pipeline.physics.epg import centre_echo_index, cpmg_echo_train
from pipeline.physics.flair_signal import flair, flair_echo_train, inversion_recovery
from pipeline.physics.mprage_signal import mprage, mprage_readout
from pipeline.physics.protocols import FLAIRProtocol, MPRAGEProtocol, TSEProtocol
from pipeline.physics.registry import SIGNAL_MODELS, SignalModel, resolve_protocol, synthesize
from pipeline.physics.spin_echo import tse, tse_echo_train, tse_epg, tse_epg_tabulated
from pipeline.physics.units import CSF_T2_MS, MAP_UNIT_MS, RELAXATION_FLOOR_MS

__all__ = [
    "CSF_T2_MS",
    "MAP_UNIT_MS",
    "RELAXATION_FLOOR_MS",
    "SIGNAL_MODELS",
    "FLAIRProtocol",
    "MPRAGEProtocol",
    "SignalModel",
    "TSEProtocol",
    "centre_echo_index",
    "cpmg_echo_train",
    "flair",
    "flair_echo_train",
    "inversion_recovery",
    "mprage",
    "mprage_readout",
    "resolve_protocol",
    "synthesize",
    "tse",
    "tse_echo_train",
    "tse_epg",
    "tse_epg_tabulated",
]
