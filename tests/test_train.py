"""fastvae.train: schedules, config, the training loop (ELBO improves, skip guard, gradient
clipping, EMA, bf16 autocast, torch.compile), exact resume, atomic checkpoints, metrics."""
import json
import math
import os
import random

import numpy as np
import pytest
import torch

from fastvae.train import (
    Constant,
    CyclicalAnnealing,
    ExponentialDecay,
    LinearWarmup,
    TensorData,
    TooManySkippedUpdates,
    TrainConfig,
    Trainer,
    latest_checkpoint,
    load_checkpoint,
    make_schedule,
    read_metrics,
    save_checkpoint,
)
from fastvae.train.checkpoint import list_checkpoints, read_checkpoint
from fastvae.train.data import epoch_permutation
from tests.train_models import DATA_DIM, TinyVAE, make_data, make_model


@pytest.fixture(autouse=True)
def one_thread():
    # The models are tiny: threads only add overhead (and contention on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(**changes) -> TrainConfig:
    values = dict(steps=10, batch_size=16, lr=1e-2, log_every=1, progress=False)
    if "epochs" in changes:
        del values["steps"]
    values.update(changes)
    return TrainConfig(**values)


def parameters(module):
    return [p.detach().clone() for p in module.parameters()]


def all_equal(first, second):
    return len(first) == len(second) and all(torch.equal(a, b) for a, b in zip(first, second))


def without_time(events):
    return [{k: v for k, v in event.items() if k != "time"} for event in events]


# ---------------------------------------------------------------------------- schedules


def test_linear_warmup_values():
    warmup = LinearWarmup(100, value=0.5)
    assert [warmup(s) for s in (0, 10, 50, 100, 101, 10**6)] == [0.0, 0.05, 0.25, 0.5, 0.5, 0.5]
    assert LinearWarmup(4, value=1.0, start=0.2)(2) == pytest.approx(0.6)


def test_cyclical_annealing_values():
    # Fu et al. 2019: 4 cycles over 400 steps, rising over the first half of each cycle.
    schedule = CyclicalAnnealing(total_steps=400, cycles=4, ratio=0.5)
    steps = [0, 10, 25, 49, 50, 75, 99, 100, 110, 150, 300, 349, 399]
    expected = [0.0, 0.2, 0.5, 0.98, 1.0, 1.0, 1.0, 0.0, 0.2, 1.0, 0.0, 0.98, 1.0]
    assert [schedule(s) for s in steps] == pytest.approx(expected)
    # A period that is not a whole number of steps: still M cycles over the run.
    odd = CyclicalAnnealing(total_steps=10, cycles=3, ratio=1.0, value=2.0)
    starts = [s for s in range(10) if odd(s) < (odd(s - 1) if s else math.inf)]
    assert starts == [0, 4, 7]
    assert odd(3) == pytest.approx(2.0 * 3 / (10 / 3))


def test_constant_and_exponential_decay():
    assert [Constant(0.3)(s) for s in (0, 5, 10**9)] == [0.3, 0.3, 0.3]
    decay = ExponentialDecay(start=2.0, rate=0.01, floor=0.5)
    assert decay(0) == 2.0
    assert decay(50) == pytest.approx(2.0 * math.exp(-0.5))
    assert decay(10**5) == 0.5


@pytest.mark.parametrize("schedule", [Constant(0.7), LinearWarmup(30, 0.9, 0.1), CyclicalAnnealing(100, 3, 0.25, 2.0),
                                      ExponentialDecay(1.5, 1e-3, 0.3)])
def test_schedule_round_trip(schedule):
    rebuilt = make_schedule(json.loads(json.dumps(schedule.to_dict())))
    assert rebuilt == schedule
    assert [rebuilt(s) for s in range(0, 200, 7)] == [schedule(s) for s in range(0, 200, 7)]


def test_schedule_specs():
    assert make_schedule(0.5) == Constant(0.5)
    assert make_schedule("2") == Constant(2.0)
    assert make_schedule("linear:1000") == LinearWarmup(1000)
    assert make_schedule("linear:1000:0.5") == LinearWarmup(1000, 0.5)
    assert make_schedule("cyclical:4:0.5", total_steps=80) == CyclicalAnnealing(80, 4, 0.5)
    assert make_schedule({"kind": "cyclical", "cycles": 2}, total_steps=10) == CyclicalAnnealing(10, 2)
    assert make_schedule("exponential:1:0.001:0.5") == ExponentialDecay(1.0, 0.001, 0.5)


@pytest.mark.parametrize(
    "spec, error",
    [("warmup:10", ValueError), ("linear:x", ValueError), ("linear:0", ValueError), ({"kind": "linear"}, ValueError),
     ({"kind": "nope"}, ValueError), ("cyclical:4:1.5", ValueError), ("cyclical:4", ValueError), (True, TypeError),
     ([1.0], TypeError), (-1.0, ValueError)],
)
def test_schedule_bad_specs(spec, error):
    with pytest.raises(error, match="fastvae.train"):
        make_schedule(spec)


# ---------------------------------------------------------------------------- config


def test_config_round_trip():
    original = TrainConfig(epochs=3, batch_size=64, lr=3e-4, optimizer="AdamW", adam_betas=(0.9, 0.95),
                           beta_schedule="cyclical:4", temperature_schedule="exponential:1:0.01:0.5",
                           grad_clip=100.0, skip_threshold=400.0, ema_decay=0.999, time_limit=90, out_dir="runs/x")
    values = json.loads(json.dumps(original.to_dict()))
    assert TrainConfig.from_dict(values) == original
    assert original.optimizer == "adamw"
    assert original.beta_schedule == {"kind": "cyclical", "cycles": 4, "ratio": 0.5, "value": 1.0, "start": 0.0}
    assert original.replace(steps=5).steps == 5 and original.replace(steps=5).epochs is None
    assert original.time_limit == 90.0 and isinstance(original.time_limit, float)


@pytest.mark.parametrize(
    "values, match",
    [({}, "exactly one of steps and epochs"), ({"steps": 5, "epochs": 1}, "exactly one"), ({"steps": 0}, "steps"),
     ({"steps": 5, "lr": -1.0}, "lr"), ({"steps": 5, "optimizer": "sgd"}, "optimizer"),
     ({"steps": 5, "ema_decay": 1.0}, "ema_decay"), ({"steps": 5, "grad_clip": 0.0}, "grad_clip"),
     ({"steps": 5, "batch_size": 2.5}, "batch_size"), ({"steps": 5, "autocast": "yes"}, "autocast"),
     ({"steps": 5, "time_limit": 0}, "time_limit"), ({"steps": 5, "time_limit": math.inf}, "time_limit"),
     ({"steps": 5, "time_limit": "1h"}, "time_limit")],
)
def test_config_errors(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**values)


def test_config_from_dict_unknown_key():
    with pytest.raises(ValueError, match="unknown keys \\['stepz'\\]"):
        TrainConfig.from_dict({"stepz": 3})


# ---------------------------------------------------------------------------- training


def test_training_improves_elbo():
    trainer = Trainer(make_model(), make_data(512), config(steps=80, batch_size=32, log_every=20),
                      eval_data=make_data(256, seed=1))
    before = trainer.evaluate()["eval/elbo"]
    metrics = trainer.fit()
    assert metrics["step"] == 80
    assert metrics["eval/elbo"] > before + 2.0, (before, metrics["eval/elbo"])
    assert metrics["elbo"] > before + 2.0


def trainer_events(trainer):
    return read_metrics(trainer.out_dir / "metrics.jsonl")


def test_epochs_visit_every_item_once_in_a_seeded_order():
    class RecordingData(torch.utils.data.Dataset):
        data_shape = (DATA_DIM,)

        def __init__(self):
            self.values = make_data(50)
            self.drawn, self.generators = [], []

        def __len__(self):
            return 50

        def __getitem__(self, index):
            return self.values[index]

        def batch(self, indices, generator=None):
            self.drawn.append(indices.clone())
            self.generators.append(generator.initial_seed())
            return self.values[indices]

    data = RecordingData()
    trainer = Trainer(make_model(), data, config(epochs=2, batch_size=16, seed=7))
    assert trainer.total_steps == 6  # 50 // 16 = 3 batches an epoch, the rest dropped
    trainer.fit()
    first, second = torch.cat(data.drawn[:3]), torch.cat(data.drawn[3:])
    assert len(set(first.tolist())) == 48 and len(set(second.tolist())) == 48
    assert torch.equal(first, epoch_permutation(50, 7, 0)[:48])
    assert torch.equal(second, epoch_permutation(50, 7, 1)[:48])
    assert not torch.equal(first, second)
    assert len(set(data.generators)) == 6  # a fresh, seeded stream per step


def test_data_inputs():
    values = make_data(40)

    class ItemsOnly(torch.utils.data.Dataset):  # no batch(): items are stacked
        def __len__(self):
            return 40

        def __getitem__(self, index):
            return values[index], 0  # (data, label), as torchvision data sets return

    runs = []
    for data in (values, TensorData(values), ItemsOnly()):
        trainer = Trainer(make_model(), data, config(steps=3))
        trainer.fit()
        runs.append(parameters(trainer.model))
    assert all_equal(runs[0], runs[1]) and all_equal(runs[0], runs[2])

    with pytest.raises(TypeError, match="floating point"):
        Trainer(make_model(), (values > 0.5).long(), config())
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(make_model(), values[:8], config())
    with pytest.raises(ValueError, match="data_shape"):
        Trainer(make_model(), torch.rand(40, DATA_DIM + 1), config())
    with pytest.raises(TypeError, match="train_data"):
        Trainer(make_model(), [values], config())


def test_dynamic_binarization_is_seeded():
    data = TensorData(torch.full((64, DATA_DIM), 0.5), binarize=True)
    draws = [data.batch(torch.arange(4), torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert set(draws[0].unique().tolist()) <= {0.0, 1.0}


def test_skipped_updates_and_the_guard():
    trainer = Trainer(make_model(), make_data(64), config(steps=20, max_consecutive_skips=3))
    trainer.fit(stop_at=2)
    before = parameters(trainer.model)
    adam_steps = [state["step"].item() for state in trainer.optimizer.state.values()]

    trainer.model.nan_loss = True  # a non-finite gradient: skipped whatever skip_threshold is
    trainer.fit(stop_at=4)
    assert all_equal(parameters(trainer.model), before)
    assert [state["step"].item() for state in trainer.optimizer.state.values()] == adam_steps
    assert trainer.total_skips == 2 and trainer.consecutive_skips == 2
    assert trainer.last_metrics["skipped"] == 1 and trainer.last_metrics["skipped_total"] == 2

    trainer.model.nan_loss = False  # one good update resets the count
    trainer.fit(stop_at=5)
    assert not all_equal(parameters(trainer.model), before)
    assert trainer.consecutive_skips == 0 and trainer.total_skips == 2

    trainer.model.nan_loss = True
    after_good = parameters(trainer.model)
    with pytest.raises(TooManySkippedUpdates) as raised:
        trainer.fit()
    message = str(raised.value)
    assert trainer.step == 8 and "3 updates in a row were skipped" in message
    for advice in ("lower the learning rate", "skip_threshold", "grad_clip", "check the data"):
        assert advice in message
    assert all_equal(parameters(trainer.model), after_good)


def test_skip_threshold_skips_large_gradients():
    trainer = Trainer(make_model(), make_data(64), config(steps=10, skip_threshold=1e-6, max_consecutive_skips=4))
    initial = parameters(trainer.model)
    with pytest.raises(TooManySkippedUpdates, match="above skip_threshold=1e-06"):
        trainer.fit()
    assert trainer.step == 4
    assert all_equal(parameters(trainer.model), initial)
    assert not trainer.optimizer.state  # Adam never stepped


def test_gradient_clipping_limits_the_norm():
    clip = 0.05
    trainer = Trainer(make_model(), make_data(64), config(steps=1, grad_clip=clip))
    metrics = trainer.fit()
    assert metrics["grad_norm"] > 10 * clip  # the logged norm is the one before clipping
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
    assert clipped.item() == pytest.approx(clip, rel=1e-4)


def test_ema_matches_hand_computation():
    decay = 0.7
    trainer = Trainer(make_model(), make_data(64), config(steps=4, ema_decay=decay))
    expected = parameters(trainer.model)
    for step in range(1, 5):
        trainer.fit(stop_at=step)
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, parameters(trainer.model))]
    for average, hand in zip(trainer.ema.module.parameters(), expected):
        torch.testing.assert_close(average, hand, rtol=1e-6, atol=1e-7)
    assert not all_equal(parameters(trainer.ema.module), parameters(trainer.model))


def test_bf16_autocast_runs():
    trainer = Trainer(make_model(), make_data(64), config(steps=3, autocast=True))
    initial = parameters(trainer.model)
    metrics = trainer.fit()
    assert trainer.model.last_hidden_dtype == torch.bfloat16
    assert math.isfinite(metrics["loss"]) and trainer.total_skips == 0
    assert not all_equal(parameters(trainer.model), initial)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_temperature_schedule_sets_the_model_attribute():
    trainer = Trainer(make_model(), make_data(64), config(steps=3, temperature_schedule="exponential:1:0.5:0.1"))
    metrics = trainer.fit()
    assert trainer.model.temperature == pytest.approx(math.exp(-1.0))  # set for step 2
    assert metrics["temperature"] == trainer.model.temperature

    class NoTemperature(TinyVAE):
        def __init__(self):
            super().__init__()
            del self.temperature

    with pytest.raises(TypeError, match="temperature"):
        Trainer(NoTemperature(), make_data(64), config(temperature_schedule=1.0))


def test_beta_and_lr_schedules_are_logged(tmp_path):
    trainer = Trainer(make_model(), make_data(64), config(steps=6, beta_schedule="linear:4", lr_warmup_steps=2,
                                                          out_dir=str(tmp_path)))
    trainer.fit()
    events = trainer_events(trainer)
    assert [e["beta"] for e in events] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [e["lr"] for e in events] == pytest.approx([5e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2])


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile unavailable")
def test_compile_runs(tmp_path):
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this platform")
    torch._dynamo.reset()
    try:
        # aot_eager traces the forward and backward through dynamo and AOTAutograd like
        # inductor does, without inductor's C++ code generation (a minute on a small CPU).
        trainer = Trainer(make_model(), make_data(64), config(steps=2, compile=True, compile_backend="aot_eager",
                                                              out_dir=str(tmp_path)))
        initial = parameters(trainer.model)
        metrics = trainer.fit()
    finally:
        torch._dynamo.reset()
    assert math.isfinite(metrics["loss"]) and not all_equal(parameters(trainer.model), initial)
    assert trainer.model._compiled_call_impl is not None  # the forward really ran compiled
    # Compiled in place: the checkpoint's keys are the model's own and load into a fresh one.
    assert set(load_checkpoint(latest_checkpoint(tmp_path)).model.state_dict()) == set(make_model().state_dict())


# ---------------------------------------------------------------------------- resume and checkpoints


def test_resume_is_bit_exact(tmp_path):
    """N steps in one go equal k steps, a stop, a resume from the checkpoint and N − k
    steps: weights, optimizer state, weight average and every logged number."""
    data = TensorData(make_data(100), binarize=True)  # dynamic binarization: a seeded stream
    settings = dict(steps=20, batch_size=16, ema_decay=0.8, beta_schedule="cyclical:2", lr_warmup_steps=5,
                    grad_clip=5.0, free_bits=0.05, eval_every=7, log_every=2)
    eval_data = make_data(40, seed=1)
    whole = Trainer(make_model(), data, config(**settings, out_dir=str(tmp_path / "whole")), eval_data=eval_data)
    whole.fit()

    stopped = Trainer(make_model(), data, config(**settings, out_dir=str(tmp_path / "stopped")), eval_data=eval_data)
    stopped.fit(stop_at=9)  # 6 batches an epoch: step 9 is mid-epoch
    assert (stopped.epoch, stopped.position) == (1, 3)
    assert len(stopped.window) == 1  # step 9's metrics, logged with step 10's after the resume
    checkpoint = latest_checkpoint(tmp_path / "stopped")
    assert checkpoint.name == "step_00000009.pt"
    # The interrupted run's later log lines (a crash after the checkpoint) are dropped.
    with open(tmp_path / "stopped" / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"step": 10, "loss": 123.0}) + "\n" + '{"step": 11, "lo')
    torch.manual_seed(12345)  # every generator must come from the checkpoint
    random.seed(1)
    np.random.seed(2)
    resumed = Trainer.from_checkpoint(checkpoint, data, eval_data=eval_data)
    assert resumed.step == 9
    resumed.fit()

    assert all_equal(parameters(resumed.model), parameters(whole.model))
    assert all_equal(parameters(resumed.ema.module), parameters(whole.ema.module))
    whole_state, resumed_state = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in whole_state:
        for name in whole_state[key]:
            assert torch.equal(whole_state[key][name], resumed_state[key][name])
    assert torch.equal(torch.get_rng_state(), _rng_after(whole))
    assert without_time(trainer_events(resumed)) == without_time(trainer_events(whole))
    assert len([e for e in trainer_events(whole) if "eval/elbo" in e]) == 3  # steps 7, 14, 20


def test_request_stop_stops_between_steps_with_a_checkpoint(tmp_path):
    """request_stop() during step 5 (as a signal handler would call it): fit finishes
    that step, writes a checkpoint at it and returns; resumed, the run equals the
    uninterrupted one bit for bit."""
    data = TensorData(make_data(100), binarize=True)
    settings = dict(steps=12, batch_size=16, ema_decay=0.8, eval_every=5, log_every=3)
    eval_data = make_data(40, seed=1)
    whole = Trainer(make_model(), data, config(**settings, out_dir=str(tmp_path / "whole")), eval_data=eval_data)
    whole.fit()

    stopped = Trainer(make_model(), data, config(**settings, out_dir=str(tmp_path / "stopped")), eval_data=eval_data)
    train_step = stopped._train_step

    def step_then_ask_to_stop(x):
        record = train_step(x)
        if stopped.step == 4:  # the step in progress is the fifth
            stopped.request_stop()
        return record

    stopped._train_step = step_then_ask_to_stop
    stopped.fit()
    assert stopped.step == 5 and stopped.stopped_on_request and not stopped.stop_requested
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step_00000005.pt"]
    # Step 5's logging and evaluation happened before the checkpoint; step 4's and 5's
    # training metrics wait in the checkpoint to be logged with step 6's.
    assert [e["step"] for e in trainer_events(stopped)] == [3, 5]
    resumed = Trainer.from_checkpoint(latest_checkpoint(tmp_path / "stopped"), data, eval_data=eval_data)
    resumed.fit()
    assert not resumed.stopped_on_request
    assert all_equal(parameters(resumed.model), parameters(whole.model))
    assert all_equal(parameters(resumed.ema.module), parameters(whole.ema.module))
    assert without_time(trainer_events(resumed)) == without_time(trainer_events(whole))


def step_clock(trainer, seconds_per_step=10.0):
    """Replace the trainer's wall clock by one that advances ``seconds_per_step`` per step
    this trainer takes, so that the time limit's tests depend on steps, not on timing."""
    start = trainer.step
    trainer._elapsed = lambda: trainer.elapsed + seconds_per_step * (trainer.step - start)
    return trainer


def test_time_limit_stops_the_run_as_its_last_step_would(tmp_path):
    """A 12-step run with a time limit of 35 s at 10 s a step stops after step 4 with the
    final logging, evaluation and checkpoint; resumed with a limit of 75 s it stops at
    step 8 (the limit is on the total), with the weights of an unlimited run at step 8;
    resumed again with the same limit it takes no step; without a limit it ends at 12
    as the run that never had one."""
    data = TensorData(make_data(100), binarize=True)
    settings = dict(steps=12, batch_size=16, ema_decay=0.8, log_every=5, eval_every=6)
    eval_data = make_data(40, seed=1)
    whole = Trainer(make_model(), data, config(**settings, out_dir=str(tmp_path / "whole")), eval_data=eval_data)
    step_clock(whole).fit(stop_at=8)
    at_eight = parameters(whole.model)
    whole.fit()
    assert not whole.stopped_by_time_limit and whole.step == 12
    assert not [e for e in trainer_events(whole) if "stopped_by" in e]  # no limit: the old behaviour

    limited = Trainer(make_model(), data, config(**settings, time_limit=35.0, out_dir=str(tmp_path / "limited")),
                      eval_data=eval_data)
    metrics = step_clock(limited).fit()
    assert limited.stopped_by_time_limit and limited.step == 4 and limited.elapsed == 40.0
    assert [p.name for p in list_checkpoints(tmp_path / "limited")] == ["step_00000004.pt"]
    events = trainer_events(limited)
    # Step 4 is logged and evaluated as a last step is, then the stop is recorded.
    assert [e["step"] for e in events if "loss" in e] == [4] and [e["step"] for e in events if "eval/elbo" in e] == [4]
    assert events[-1] == {"step": 4, "epoch": round(4 / 6, 4), "stopped_by": "time_limit", "time_limit": 35.0,
                          "time": 40.0}
    assert metrics["stopped_by"] == "time_limit" and "eval_ema/elbo" in metrics
    checkpoint = read_checkpoint(latest_checkpoint(tmp_path / "limited"))
    assert checkpoint["trainer"]["elapsed"] == 40.0 and checkpoint["train_config"]["time_limit"] == 35.0

    resumed = Trainer.from_checkpoint(latest_checkpoint(tmp_path / "limited"), data, eval_data=eval_data,
                                      time_limit=75.0)
    assert resumed.step == 4 and not resumed.time_limit_reached
    step_clock(resumed).fit()
    assert resumed.stopped_by_time_limit and resumed.step == 8 and resumed.elapsed == 80.0
    assert all_equal(parameters(resumed.model), at_eight)

    again = Trainer.from_checkpoint(latest_checkpoint(tmp_path / "limited"), data, eval_data=eval_data)
    assert again.step == 8 and again.time_limit_reached
    before = len(trainer_events(again))
    step_clock(again).fit()
    assert again.stopped_by_time_limit and again.step == 8 and len(trainer_events(again)) == before

    unlimited = Trainer.from_checkpoint(latest_checkpoint(tmp_path / "limited"), data, eval_data=eval_data,
                                        time_limit=None)
    step_clock(unlimited).fit()
    assert not unlimited.stopped_by_time_limit and unlimited.step == 12
    assert all_equal(parameters(unlimited.model), parameters(whole.model))
    assert all_equal(parameters(unlimited.ema.module), parameters(whole.ema.module))


def _rng_after(trainer):
    return read_checkpoint(latest_checkpoint(trainer.out_dir))["rng"][0]["torch"]


def test_load_checkpoint_rebuilds_the_model(tmp_path):
    trainer = Trainer(make_model(latent_dim=2), make_data(64), config(steps=3, ema_decay=0.5, out_dir=str(tmp_path)))
    trainer.fit()
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert isinstance(loaded.model, TinyVAE) and loaded.model.latent_dim == 2 and not loaded.model.training
    assert all_equal(parameters(loaded.model), parameters(trainer.model))
    assert all_equal(parameters(loaded.ema_model), parameters(trainer.ema.module))
    assert loaded.train_config == trainer.config and loaded.step == 3

    path = save_checkpoint(tmp_path / "bare.pt", trainer.model)  # a model alone, no trainer
    bare = load_checkpoint(path)
    assert bare.step == 0 and bare.train_config is None and bare.ema_model is None
    assert all_equal(parameters(bare.model), parameters(trainer.model))

    with pytest.raises(FileNotFoundError, match="load_checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="load_checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a fastvae training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = Trainer(make_model(), make_data(64), config(steps=2, out_dir=str(tmp_path)))
    trainer.fit()
    path = latest_checkpoint(tmp_path)
    good = parameters(trainer.model)
    # Change the weights, then crash while saving them.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)

    real_save = torch.save

    def crashing_save(obj, file, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, file)  # some bytes reach the file...
        raise OSError("disk full")  # ...then the write fails

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(path)  # overwrite the good checkpoint
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint(tmp_path / "checkpoints" / "new.pt")
    monkeypatch.undo()

    assert all_equal(parameters(load_checkpoint(path).model), good)
    assert not (tmp_path / "checkpoints" / "new.pt").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [path.name]  # no temporary files


def test_a_fresh_run_never_mixes_into_another_runs_folder(tmp_path):
    Trainer(make_model(), make_data(64), config(steps=3, out_dir=str(tmp_path))).fit()
    with pytest.raises(FileExistsError, match="from_checkpoint"):
        Trainer(make_model(), make_data(64), config(steps=2, out_dir=str(tmp_path))).fit()
    Trainer(make_model(), make_data(64), config(steps=2, out_dir=str(tmp_path), overwrite=True)).fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002.pt"]
    assert [e["step"] for e in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_keep_last_checkpoints(tmp_path):
    trainer = Trainer(make_model(), make_data(64), config(steps=7, checkpoint_every=2, keep_last=2,
                                                          out_dir=str(tmp_path)))
    trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000006.pt", "step_00000007.pt"]


# ---------------------------------------------------------------------------- metrics


def test_metrics_jsonl(tmp_path):
    trainer = Trainer(make_model(), make_data(64), config(steps=7, log_every=3, eval_every=5, ema_decay=0.9,
                                                          out_dir=str(tmp_path)), eval_data=make_data(20, seed=1))
    final = trainer.fit()
    events = trainer_events(trainer)
    train = [e for e in events if "loss" in e]
    evals = [e for e in events if "eval/elbo" in e]
    assert [e["step"] for e in train] == [3, 6, 7]  # the last window is logged at the end
    assert [e["step"] for e in evals] == [5, 7]
    for event in train:
        for key in ("step", "epoch", "loss", "elbo", "nll", "kl", "beta", "grad_norm", "skipped", "lr", "time",
                    "kl_objective"):
            assert key in event, key
        assert event["elbo"] == pytest.approx(-(event["nll"] + event["kl"]))
        assert event["skipped"] == 0
    assert train[0]["epoch"] == pytest.approx(3 / 4)
    for event in evals:
        assert len(event["eval/kl_per_dim"]) == 3 and len(event["eval_ema/kl_per_dim"]) == 3
        assert sum(event["eval/kl_per_dim"]) == pytest.approx(event["eval/kl"], rel=1e-6)
        assert event["eval/bits_per_dim"] == pytest.approx(-event["eval/elbo"] / (math.log(2) * DATA_DIM))
    assert final["eval/elbo"] == evals[-1]["eval/elbo"] and final["loss"] == train[-1]["loss"]
    # Evaluation draws no training randomness: the same run without eval data trains identically.
    plain = Trainer(make_model(), make_data(64), config(steps=7, log_every=3, ema_decay=0.9))
    plain.fit()
    assert all_equal(parameters(plain.model), parameters(trainer.model))


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    Trainer(make_model(), make_data(64), config(steps=6, out_dir=str(run))).fit()
    # Replacing a run replaces its TensorBoard events too.
    trainer = Trainer(make_model(), make_data(64), config(steps=4, log_every=2, out_dir=str(run), overwrite=True),
                      eval_data=make_data(20, seed=1))
    trainer.fit()
    files = os.listdir(run / "tensorboard")
    assert len(files) == 1 and files[0].startswith("events.out.tfevents")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/elbo", "train/kl", "train/grad_norm", "eval/elbo"} <= set(scalars)
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]

    off = tmp_path / "off"
    Trainer(make_model(), make_data(64), config(steps=2, out_dir=str(off), tensorboard=False)).fit()
    assert not (off / "tensorboard").exists() and (off / "metrics.jsonl").exists()
