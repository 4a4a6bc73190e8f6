"""Ignite handlers (and an event filter) of the training that MONAI and Ignite lack in the form the bundle needs.

* :class:`LambdaWarmup` -- ramps ``HybridLoss.lambda_self`` up over the first epochs. Ignite's parameter
  schedulers (``LinearCyclicalScheduler``, ``PiecewiseLinear``) act on an optimizer's ``param_groups``, not on an
  attribute of the loss, so this is written by hand.
* :class:`DivergenceStop` -- stops training when a validation metric runs away from its best value. Ignite's
  ``EarlyStopping`` stops when a score has not *improved* for ``patience`` validations, which would also stop a
  run that plateaus; a run whose T2 error doubles should stop at once, so this is written by hand too.
* :class:`NonFiniteLossStop` -- stops training at the first NaN or infinite loss. Ignite's ``TerminateOnNan`` does
  the same check, but its warning names neither the epoch nor the iteration, goes through a console handler of its
  own (printed twice under the bundle's logging config), and it decides per process: in a DDP run the processes
  whose loss is still finite would wait in the next gradient all-reduce for the one that stopped, until the
  collective times out. This handler shares the decision across processes and otherwise relies on what
  ``Engine.terminate`` does (see the class).
* :class:`SmartSliceCacheHandler` -- MONAI's ``SmartCacheHandler`` (start, swap volumes after each epoch, stop) for
  the slice dataset over a ``SmartCacheDataset`` of volumes, which must re-index its slices after each swap.
* :class:`TissueValueHandler` -- tissue values on the fly (:mod:`pipeline.data.tissue_values`): before training and
  every ``n`` iterations, the next cached training volume is re-synthesised with new tissue values.
* :class:`ReleaseIterationData` -- drops the engine's last output before the next batch is read. Ignite (0.5) resets
  ``state.batch`` before reading but ``state.output`` only after, and a MONAI engine's output holds the iteration's
  image and prediction: while a whole-volume evaluator reads subject ``i + 1`` it still holds subject ``i``'s volumes
  and maps, two subjects in memory instead of one. Neither Ignite nor MONAI has a handler for this (MONAI's
  ``GarbageCollector`` collects only what is already unreferenced).
* :func:`every_n_iterations_of_epoch` -- an event filter for ``StatsHandler(iteration_log=...)``. Ignite's
  ``Events.ITERATION_COMPLETED(every=n)`` counts iterations over the whole run, so with an epoch length that is not
  a multiple of ``n`` the log lines wander through the epochs (``Iter: 20/49``, ``40/49``, ``11/49``, ...); this
  filter counts within each epoch, as the line's ``Iter: i/L`` does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.handlers import SmartCacheHandler

__all__ = [
    "TissueValueHandler",
    "DivergenceStop",
    "LambdaWarmup",
    "NonFiniteLossStop",
    "ReleaseIterationData",
    "SmartSliceCacheHandler",
    "every_n_iterations_of_epoch",
]


class LambdaWarmup:
    """Set ``loss.lambda_self`` to ``lambda_self * min(1, epoch / warmup_epochs)`` at the start of every epoch.

    Epoch 1 trains with ``lambda_self / warmup_epochs``, epoch ``warmup_epochs`` and later with ``lambda_self``: the
    network first learns the maps from the labels, then the edge term sharpens them. ``warmup_epochs <= 1`` keeps
    ``lambda_self`` constant (no warm-up). A run resumed from a checkpoint gets the value of its epoch.

    Args:
        loss: a :class:`pipeline.losses.HybridLoss` (anything with a ``lambda_self`` attribute).
        lambda_self: the value after the warm-up (> 0; a supervised run, ``lambda_self = 0``, has nothing to ramp).
        warmup_epochs: epochs of the linear ramp.
    """

    def __init__(self, loss, lambda_self: float, warmup_epochs: int = 1) -> None:
        self.loss = loss
        self.lambda_self = float(lambda_self)
        self.warmup_epochs = int(warmup_epochs)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def value(self, epoch: int) -> float:
        """``lambda_self`` during the (1-based) ``epoch``."""
        return self.lambda_self * min(1.0, epoch / max(self.warmup_epochs, 1))

    def __call__(self, engine: Engine) -> None:
        if self.lambda_self > 0:
            self.loss.lambda_self = self.value(engine.state.epoch)


class DivergenceStop:
    """Stop the trainer when a validation metric exceeds ``factor`` times its best (lowest) value so far.

    Attach to the validation evaluator (``val_handlers``): after every validation it reads
    ``evaluator.state.metrics[name]`` for each name of ``metric_names`` (errors, lower is better, e.g.
    ``val_t2_mpe``; a NaN or infinite value counts as diverged), logs a warning naming the metric, its value, its best
    value and the training epoch, and terminates ``trainer``. Whichever model the key-metric checkpoint kept (the best
    validation) stays the model; ``diverged_epoch`` records the epoch (None while the run is healthy).

    Validations before epoch ``start_epoch`` are not compared (only a non-finite value stops them) and do not count
    towards the best: early in training the errors of a network still learning the maps' scale swing by 2x from one
    validation to the next (training-time T2 MPE at epoch 4 of nine runs of docs/results/default: 24-62 %), which is
    not divergence.

    Args:
        trainer: the training engine to stop.
        metric_names: validation metrics to watch.
        factor: how many times its best value a metric may reach (> 1).
        start_epoch: the first training epoch whose validation is compared and counts towards the best (1: all).
    """

    def __init__(self, trainer: Engine, metric_names: Sequence[str], factor: float = 1.5, start_epoch: int = 1) -> None:
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}.")
        self.trainer = trainer
        self.start_epoch = int(start_epoch)
        self.metric_names = tuple(metric_names)
        self.factor = float(factor)
        self.best: dict[str, float] = {}
        self.diverged_epoch: int | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        missing = [name for name in self.metric_names if name not in evaluator.state.metrics]
        if missing:
            raise KeyError(f"DivergenceStop watches {missing}, which the evaluator does not compute.")
        for name in self.metric_names:
            value = float(evaluator.state.metrics[name])
            if math.isfinite(value) and self.trainer.state.epoch < self.start_epoch:
                continue
            best = self.best.get(name, value)
            if not math.isfinite(value) or value > self.factor * best:
                self.diverged_epoch = self.trainer.state.epoch
                self.logger.warning(
                    f"validation diverged at epoch {self.diverged_epoch}: {name} = {value:.4g} > {self.factor:g} x "
                    f"its best {best:.4g}; training stops, the best validated model is kept."
                )
                self.trainer.terminate()
                return
            self.best[name] = min(best, value)


class NonFiniteLossStop:
    """Stop training after the first iteration whose loss (or a loss term) is NaN or infinite; keep the checkpoints.

    Attach to the trainer: after every iteration it reads ``output_transform(engine.state.output)`` (a mapping of
    names to Python floats or 0-d tensors, e.g. ``pipeline.engine.loss_terms_output(loss)``: the total loss and the
    terms of ``loss.last_components``); when a value is not finite in any process of the run (the flag is
    all-reduced, so every DDP process stops at the same iteration), it logs an error naming the epoch, the
    iteration and the values, and terminates the trainer. ``stopped_at`` records ``(epoch, iteration)`` (None while
    the run is healthy).

    The optimiser step of that iteration has already made the network's weights non-finite; none of them reaches a
    checkpoint: ``Engine.terminate()`` during an iteration ends the run *without* ``EPOCH_COMPLETED`` (Ignite 0.5:
    the terminate signal leaves the epoch loop before that event; ``TERMINATE`` and ``COMPLETED`` follow), so the
    epoch-level ``CheckpointSaver`` and the ``ValidationHandler`` (with the key-metric checkpoint ``model.pt`` of
    its evaluator) do not run again, and the files on disk stay those of the last completed epoch. A saver of the
    final state (``CheckpointSaver(save_final=True)``, attached to ``COMPLETED``) would write the non-finite
    weights: the bundle has none.

    Args:
        output_transform: engine output -> ``{name: value}`` of the values to check and log; default: the engine
            output's ``"loss"`` (MONAI trainers with ``decollate=False``).
    """

    def __init__(
        self, output_transform: Callable[[Any], Mapping[str, Any]] = lambda output: {"loss": output["loss"]}
    ) -> None:
        self.output_transform = output_transform
        self.stopped_at: tuple[int, int] | None = None
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        values = {name: float(value) for name, value in self.output_transform(engine.state.output).items()}
        finite_here = all(math.isfinite(value) for value in values.values())
        if idist.all_reduce(float(not finite_here), op="MAX") == 0:
            return
        state = engine.state
        self.stopped_at = (state.epoch, state.iteration)
        shown = ", ".join(f"{name} = {value:.4g}" for name, value in values.items())
        where = " in another process" if finite_here else ""
        self.logger.error(
            f"non-finite training loss{where} at epoch {state.epoch}, iteration {state.iteration} "
            f"({_iteration_in_epoch(state)}/{state.epoch_length} of the epoch): {shown}; training stops before the "
            "epoch completes, so no checkpoint or validation is made of these weights: the checkpoints of the last "
            "completed epoch stay."
        )
        engine.terminate()


class SmartSliceCacheHandler(SmartCacheHandler):
    """MONAI's ``SmartCacheHandler`` for a :class:`pipeline.data.slices.SliceDataset` over a ``SmartCacheDataset``.

    After each epoch the volume cache replaces its ``replace_rate`` share of subjects (computed in a background
    thread during the epoch), then the slices are re-indexed (seeded by the epoch) with the same number of items.

    Args:
        slices: the training slice dataset; its ``volumes`` must be a ``monai.data.SmartCacheDataset``.
    """

    def __init__(self, slices) -> None:
        super().__init__(slices.volumes)
        self.slices = slices

    def epoch_completed(self, engine: Engine) -> None:
        super().epoch_completed(engine)
        self.slices.refresh(seed=engine.state.epoch)


class TissueValueHandler:
    """Re-draws the tissue values of the cached training volumes: all of them when training starts, then the next one
    (in turn) every ``every_n_iterations`` iterations, so the values seen change many times per epoch.

    Args:
        sampler: a :class:`pipeline.data.tissue_values.TissueValueSampler` over the training slice dataset's volumes.
        every_n_iterations: iterations between two re-draws.
    """

    def __init__(self, sampler, every_n_iterations: int = 4) -> None:
        if int(every_n_iterations) < 1:
            raise ValueError(f"every_n_iterations must be >= 1, got {every_n_iterations}")
        self.sampler, self.every_n_iterations = sampler, int(every_n_iterations)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.redraw_all)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_iterations), self.redraw_next)

    def redraw_all(self, engine: Engine) -> None:
        for index in range(len(self.sampler.syntheses)):
            self.sampler.redraw(index)

    def redraw_next(self, engine: Engine) -> None:
        self.sampler.redraw()


class ReleaseIterationData:
    """Sets ``engine.state.batch`` and ``engine.state.output`` to ``None`` at ``GET_BATCH_STARTED`` (Ignite resets the
    batch there itself in 0.5, not the output).

    The handlers of ``ITERATION_COMPLETED`` have used them by then; what the next iteration needs is read after this
    event. The peak memory of a streamed run is then one subject's, whatever the number of subjects.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.batch = engine.state.output = None


def every_n_iterations_of_epoch(n: int) -> Callable[[Engine, int], bool]:
    """Ignite event filter ``(engine, iteration) -> bool``: true at iterations ``n, 2n, ...`` of every epoch.

    Ignite filters see the global iteration count (1-based); its position in the epoch is what ``StatsHandler``
    prints as ``Iter: i/L``. An epoch of ``L`` iterations therefore logs ``L // n`` lines, at the same positions in
    every epoch.

    Args:
        n: iterations between two log lines (>= 1).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")

    def every_n(engine: Engine, iteration: int) -> bool:
        return _iteration_in_epoch(engine.state) % n == 0

    return every_n


def _iteration_in_epoch(state) -> int:
    """1-based position of ``state.iteration`` in its epoch (the global count while the epoch length is unknown)."""
    if state.epoch_length is None:
        return state.iteration
    return (state.iteration - 1) % state.epoch_length + 1
