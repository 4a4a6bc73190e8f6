"""The training-schedule handlers: lambda warm-up and the divergence stop, on real Ignite engines."""

import logging

import pytest
from ignite.engine import Engine, Events

from pipeline.handlers import DivergenceStop, LambdaWarmup
from pipeline.losses import HybridLoss


def test_lambda_warmup_ramps_linearly_then_holds():
    loss = HybridLoss(lambda_self=0.03)
    seen = []
    trainer = Engine(lambda engine, batch: seen.append((engine.state.epoch, loss.lambda_self)))
    LambdaWarmup(loss, lambda_self=0.03, warmup_epochs=4).attach(trainer)
    trainer.run([0], max_epochs=6)
    assert [value for _, value in seen] == pytest.approx([0.0075, 0.015, 0.0225, 0.03, 0.03, 0.03])
    constant = LambdaWarmup(loss, lambda_self=0.03, warmup_epochs=1)
    assert [constant.value(epoch) for epoch in (1, 2, 9)] == [0.03] * 3
    supervised = HybridLoss(lambda_self=0.0)
    LambdaWarmup(supervised, lambda_self=0.0, warmup_epochs=4)(trainer)
    assert supervised.lambda_self == 0.0


def _train_with_validation_errors(errors, factor=1.5):
    """A trainer validating after every epoch, the evaluator reporting ``errors[epoch - 1]`` as val_t2_mpe."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def report(engine):
        engine.state.metrics["val_t2_mpe"] = errors[trainer.state.epoch - 1]

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    stop = DivergenceStop(trainer, ["val_t2_mpe"], factor=factor)
    stop.attach(evaluator)
    trainer.run([0], max_epochs=len(errors))
    return trainer, stop


def test_divergence_stop_terminates_at_the_epoch_a_metric_runs_away(caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.handlers"):
        trainer, stop = _train_with_validation_errors([12.0, 8.0, 9.0, 13.0, 7.0, 6.0])
    assert trainer.state.epoch == 4 and stop.diverged_epoch == 4  # 13 > 1.5 x 8; 9 is not
    assert "diverged at epoch 4: val_t2_mpe = 13 > 1.5 x its best 8" in caplog.text


def test_divergence_stop_lets_a_healthy_or_nan_free_run_finish_and_stops_on_nan():
    trainer, stop = _train_with_validation_errors([12.0, 8.0, 11.9, 7.0])
    assert trainer.state.epoch == 4 and stop.diverged_epoch is None
    trainer, stop = _train_with_validation_errors([12.0, float("nan"), 7.0])
    assert stop.diverged_epoch == 2
    with pytest.raises(ValueError, match="factor must be > 1"):
        DivergenceStop(trainer, ["val_t2_mpe"], factor=1.0)
    evaluator = Engine(lambda engine, batch: None)
    DivergenceStop(trainer, ["val_t1_mpe"]).attach(evaluator)
    with pytest.raises(KeyError, match="val_t1_mpe"):
        evaluator.run([0])
