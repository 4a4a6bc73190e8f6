"""Ignite handlers of the training schedule that neither MONAI nor Ignite provides.

* :class:`LambdaWarmup` -- ramps ``HybridLoss.lambda_self`` up over the first epochs. Ignite's parameter
  schedulers (``LinearCyclicalScheduler``, ``PiecewiseLinear``) act on an optimizer's ``param_groups``, not on an
  attribute of the loss, so this is written by hand.
* :class:`DivergenceStop` -- stops training when a validation metric runs away from its best value. Ignite's
  ``EarlyStopping`` stops when a score has not *improved* for ``patience`` validations, which would also stop a
  run that plateaus; a run whose T2 error doubles should stop at once, so this is written by hand too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from ignite.engine import Engine, Events

__all__ = ["DivergenceStop", "LambdaWarmup"]


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
    ``val_t2_mpe``; a NaN or infinite value counts as diverged), logs a warning naming the metric, its value, its best value and the training epoch, and
    terminates ``trainer``. Whichever model the key-metric checkpoint kept (the best validation) stays the model;
    ``diverged_epoch`` records the epoch (None while the run is healthy).

    Args:
        trainer: the training engine to stop.
        metric_names: validation metrics to watch.
        factor: how many times its best value a metric may reach (> 1).
    """

    def __init__(self, trainer: Engine, metric_names: Sequence[str], factor: float = 1.5) -> None:
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}.")
        self.trainer = trainer
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
