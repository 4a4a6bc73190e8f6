"""The training handlers (lambda warm-up, divergence stop, non-finite loss stop, log filter) on real engines."""

import gc
import logging
import weakref

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointSaver, MeanAbsoluteError, ValidationHandler, from_engine

from pipeline.engine import loss_terms_output
from pipeline.handlers import (
    DivergenceStop,
    LambdaWarmup,
    NonFiniteLossStop,
    ReleaseIterationData,
    every_n_iterations_of_epoch,
)
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


def _train_with_validation_errors(errors, factor=1.5, start_epoch=1):
    """A trainer validating after every epoch, the evaluator reporting ``errors[epoch - 1]`` as val_t2_mpe."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def report(engine):
        engine.state.metrics["val_t2_mpe"] = errors[trainer.state.epoch - 1]

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    stop = DivergenceStop(trainer, ["val_t2_mpe"], factor=factor, start_epoch=start_epoch)
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


def test_divergence_stop_ignores_the_validations_before_its_start_epoch():
    """An oracle of docs/results/default validated 26 % then 60 % T2 MPE at epochs 4 and 8 of 16 while learning."""
    errors = [26.0, 60.0, 20.0, 28.0]
    assert _train_with_validation_errors(errors)[1].diverged_epoch == 2  # all validations count: 60 > 1.5 x 26
    for start_epoch in (2, 3):  # epoch 1 (and 2) neither stop nor set the best; 28 < 1.5 x 20
        trainer, stop = _train_with_validation_errors(errors, start_epoch=start_epoch)
        assert trainer.state.epoch == 4 and stop.diverged_epoch is None
    assert _train_with_validation_errors([*errors[:3], 31.0], start_epoch=3)[1].diverged_epoch == 4  # > 1.5 x 20
    assert _train_with_validation_errors([26.0, float("nan"), 20.0], start_epoch=3)[1].diverged_epoch == 2


class _LossTurningNaN(torch.nn.Module):
    """L1 loss that is NaN at its ``nan_call``-th call (1-based), with ``last_components`` as HybridLoss has."""

    def __init__(self, nan_call: int) -> None:
        super().__init__()
        self.nan_call, self.calls = nan_call, 0
        self.last_components: dict[str, torch.Tensor] = {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = torch.nn.functional.l1_loss(pred, target)
        if self.calls == self.nan_call:
            loss = loss * float("nan")
        self.last_components = {"supervised": loss.detach(), "self_mprage": torch.tensor(0.5)}
        return loss


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in network.state_dict().items()}


def test_non_finite_loss_stops_at_its_iteration_and_keeps_the_last_good_checkpoints(tmp_path, caplog):
    """The bundle's wiring on a small MONAI trainer: a full-state CheckpointSaver each epoch (n_saved=1) and a
    validation each epoch keeping ``model.pt`` by its key metric. The loss turns NaN at epoch 2, iteration 5
    (2/3 of the epoch): training stops there and both files still hold the finite weights of epoch 1."""
    torch.manual_seed(0)
    items = [{"image": torch.rand(1, 4, 4), "label": torch.rand(1, 4, 4)} for _ in range(6)]
    network = torch.nn.Conv2d(1, 1, 3, padding=1)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    loss = _LossTurningNaN(nan_call=5)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items[:2], batch_size=2),
        network=network,
        key_val_metric={"val_mae": MeanAbsoluteError(output_transform=from_engine(["pred", "label"]))},
        metric_cmp_fn=lambda current, best: current < best,
        val_handlers=[
            CheckpointSaver(
                save_dir=tmp_path,
                save_dict={"model": network},
                save_key_metric=True,
                key_metric_filename="model.pt",
                key_metric_negative_sign=True,
            )
        ],
    )
    stop = NonFiniteLossStop(output_transform=loss_terms_output(loss))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=DataLoader(items, batch_size=2),
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        train_handlers=[ValidationHandler(validator=evaluator, interval=1, epoch_level=True), stop],
        decollate=False,
    )
    state_dict = {"model": network, "optimizer": optimizer, "trainer": trainer}
    CheckpointSaver(save_dir=tmp_path, save_dict=state_dict, save_interval=1, n_saved=1, epoch_level=True).attach(
        trainer
    )
    saved_weights = {}
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: saved_weights.update({engine.state.epoch: _state(network)})
    )

    with caplog.at_level(logging.ERROR, logger="pipeline.handlers"):
        trainer.run()

    assert stop.stopped_at == (2, 5) and (trainer.state.epoch, trainer.state.iteration) == (2, 5)
    assert "non-finite training loss at epoch 2, iteration 5 (2/3 of the epoch): loss = nan, supervised = nan, " in (
        caplog.text
    )
    assert "self_mprage = 0.5" in caplog.text
    assert not all(torch.isfinite(value).all() for value in network.state_dict().values()), "the NaN step happened"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt", "model.pt"]
    assert list(saved_weights) == [1] and evaluator.state.epoch == 1  # no epoch end, no validation after the NaN
    full_state = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=False)
    assert full_state["trainer"]["iteration"] == 3
    for weights in (full_state["model"], torch.load(tmp_path / "model.pt")):
        assert weights.keys() == saved_weights[1].keys()
        for name, value in weights.items():
            assert torch.isfinite(value).all() and torch.equal(value, saved_weights[1][name]), name


def test_non_finite_loss_in_another_process_stops_this_one_too(monkeypatch, caplog):
    """DDP: the flag is all-reduced (max over processes), so a process with a finite loss stops at the same
    iteration as the one whose loss is NaN, instead of waiting in the next gradient all-reduce."""
    flags = []

    def all_reduce_with_another_nan_at_iteration_2(flag, op):
        flags.append((flag, op))
        return max(flag, float(len(flags) == 2))

    monkeypatch.setattr("pipeline.handlers.idist.all_reduce", all_reduce_with_another_nan_at_iteration_2)
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(0.25)})
    stop = NonFiniteLossStop()
    stop.attach(trainer)
    with caplog.at_level(logging.ERROR, logger="pipeline.handlers"):
        trainer.run([0, 1, 2], max_epochs=2)
    assert stop.stopped_at == (1, 2) and trainer.state.iteration == 2
    assert flags == [(0.0, "MAX"), (0.0, "MAX")]
    assert "non-finite training loss in another process at epoch 1, iteration 2 (2/3 of the epoch): loss = 0.25" in (
        caplog.text
    )


def test_non_finite_loss_stop_lets_a_finite_run_finish():
    trainer = Engine(lambda engine, batch: {"loss": torch.tensor(float(engine.state.iteration))})
    stop = NonFiniteLossStop()
    stop.attach(trainer)
    trainer.run([0, 1], max_epochs=3)
    assert stop.stopped_at is None and trainer.state.iteration == 6


def test_every_n_iterations_of_epoch_counts_within_each_epoch():
    logged = []
    trainer = Engine(lambda engine, batch: None)
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(event_filter=every_n_iterations_of_epoch(2)),
        lambda engine: logged.append((engine.state.epoch, engine.state.iteration)),
    )
    trainer.run(range(5), max_epochs=3)
    assert logged == [(1, 2), (1, 4), (2, 7), (2, 9), (3, 12), (3, 14)]  # positions 2 and 4 of each 5-iteration epoch
    with pytest.raises(ValueError, match="n must be >= 1"):
        every_n_iterations_of_epoch(0)


@pytest.mark.parametrize("release", [False, True])
def test_release_iteration_data_frees_a_subject_before_the_next_is_read(release):
    """With the handler, the previous batch and output are unreferenced when the loader makes the next batch."""
    tracked: list[weakref.ref] = []

    def track(tensor: torch.Tensor) -> torch.Tensor:
        tracked.append(weakref.ref(tensor))
        return tensor

    alive_while_reading = []

    def subjects():
        for index in range(3):
            gc.collect()
            alive_while_reading.append(sum(ref() is not None for ref in tracked))
            yield track(torch.full((2, 4), float(index)))

    seen_at_completion = []
    engine = Engine(lambda engine, batch: track(batch * 2))
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen_at_completion.append(float(e.state.output[0, 0]))
    )
    if release:
        ReleaseIterationData().attach(engine)
    engine.run(subjects(), max_epochs=1, epoch_length=3)
    assert seen_at_completion == [0.0, 2.0, 4.0]  # the handlers of the iteration still see its output
    assert alive_while_reading == ([0, 0, 0] if release else [0, 1, 1])  # Ignite keeps the previous output
