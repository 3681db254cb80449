"""fastvae.train under torchrun: 2 CPU processes on gloo (tests/train_ddp_worker.py).

Checks that both processes end with identical weights (the deep hierarchical model's
too), that DDP on two halves of each global batch equals one process on the whole batch
(up to float summation order), that
a DDP run stopped and resumed from a checkpoint continues bit for bit, and that only
rank 0 writes files.  Also the single-process helpers of fastvae.train.distributed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastvae.train import Trainer, TrainConfig, distributed, read_metrics
from tests.train_models import make_data, make_model

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "train_ddp_worker.py"
TIMEOUT_S = 180


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    results = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""  # two CPU processes on gloo, also on a machine with a GPU
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(WORKER), str(results)]
    try:
        finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{expired.stdout}\n{expired.stderr}")
    assert finished.returncode == 0, f"torchrun failed:\n{finished.stdout}\n{finished.stderr}"
    return results


def load(results: Path, name: str, rank: int) -> dict:
    return torch.load(results / f"{name}_rank{rank}.pt", weights_only=True)


@pytest.mark.parametrize("name", ["deterministic", "full", "resumed", "deep"])
def test_ranks_end_identical(ddp_results, name):
    first, second = load(ddp_results, name, 0), load(ddp_results, name, 1)
    assert first["world_size"] == 2 and first["wrapped"] == "DistributedDataParallel"
    for key, value in first["weights"].items():
        assert torch.equal(value, second["weights"][key]), key
    # Logged metrics are averaged over the processes: the same numbers on both.
    assert first["metrics"]["loss"] == second["metrics"]["loss"]


def test_the_deep_model_trains_under_ddp(ddp_results):
    from fastvae.models import build_model
    from tests.train_ddp_worker import DEEP_MODEL

    torch.manual_seed(0)
    initial = build_model(DEEP_MODEL).state_dict()
    trained = load(ddp_results, "deep", 0)
    assert trained["metrics"]["step"] == 4 and trained["metrics"]["skipped_total"] == 0
    assert any(not torch.equal(value, trained["weights"][key]) for key, value in initial.items())


def test_ddp_equals_one_process_on_the_global_batch(ddp_results):
    from tests.train_ddp_worker import CONFIG

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(make_model(deterministic=True), make_data(96), TrainConfig(**CONFIG))
        single.fit()
    finally:
        torch.set_num_threads(threads)
    ddp = load(ddp_results, "deterministic", 0)
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["weights"][key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert ddp["metrics"]["loss"] == pytest.approx(single.last_metrics["loss"], rel=1e-5)


def test_resume_under_ddp_is_bit_exact(ddp_results):
    full, resumed = load(ddp_results, "full", 0), load(ddp_results, "resumed", 0)
    for key, value in full["weights"].items():
        assert torch.equal(value, resumed["weights"][key]), key
    without_time = lambda events: [{k: v for k, v in e.items() if k != "time"} for e in events]  # noqa: E731
    assert without_time(read_metrics(ddp_results / "run_resumed" / "metrics.jsonl")) == without_time(
        read_metrics(ddp_results / "run_full" / "metrics.jsonl")
    )


def test_only_rank_zero_writes(ddp_results):
    run = ddp_results / "run_full"
    events = read_metrics(run / "metrics.jsonl")
    assert [e["step"] for e in events] == [2, 4, 6, 8, 10]  # one writer: no line twice
    assert len(os.listdir(run / "tensorboard")) == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000010.pt"]
    checkpoint = torch.load(run / "checkpoints" / "step_00000010.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2  # every process's generators, for an exact resume
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    context = distributed.init_from_env()
    assert (context.rank, context.world_size, context.enabled, context.is_main) == (0, 1, False, True)
    indices = torch.arange(8)
    assert torch.equal(distributed.shard_batch(indices, context), indices)
    two = distributed.DistributedContext(rank=1, world_size=2)
    assert torch.equal(distributed.shard_batch(indices, two), torch.arange(4, 8))
    with pytest.raises(ValueError, match="does not split evenly"):
        distributed.shard_batch(torch.arange(7), two)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(module, context, torch.device("cpu")) is module
    assert distributed.all_gather_objects({"a": 1}, context) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.init_from_env()
