"""The per-process script of test_distributed.py, started by
``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/train_ddp_worker.py RESULTS``.

In one process group it trains three times and saves each process's final weights under
RESULTS (the test compares them):

1. ``deterministic``: the deterministic tiny model (no sampling noise), to compare with
   one process training on the same global batches;
2. ``full``: the stochastic model, 10 steps in one go;
3. ``resumed``: the same run stopped at step 4, the generators scrambled, and continued
   from the step-4 checkpoint by a new trainer;
4. ``deep``: a tiny deep hierarchical VAE (fastvae.models.DeepVAE, its latent groups'
   fused ops and convolutions under DistributedDataParallel) on binary 8×8 images.
"""
import os
import sys
from pathlib import Path

import torch

from fastvae.models import build_model
from fastvae.train import TrainConfig, Trainer, distributed, latest_checkpoint
from tests.train_models import make_data, make_model

CONFIG = dict(steps=10, batch_size=16, lr=1e-2, log_every=2, progress=False, seed=3, device="cpu")
DEEP_MODEL = {"name": "deep", "data_shape": [1, 8, 8], "resolutions": [8, 4, 1], "width": 8,
              "encoder_blocks": [1, 1, 1], "decoder_groups": [1, 1, 1], "latent_channels": 2}


def deep_images(num_items: int) -> torch.Tensor:
    """[num_items, 1, 8, 8] binary images, the same on every process."""
    return (torch.rand(num_items, 1, 8, 8, generator=torch.Generator().manual_seed(7)) < 0.3).float()


def save_weights(trainer: Trainer, results: Path, name: str) -> None:
    rank = trainer.context.rank
    weights = {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}
    torch.save(
        {
            "weights": weights,
            "world_size": trainer.context.world_size,
            "wrapped": type(trainer.forward_model).__name__,
            "metrics": trainer.last_metrics,
        },
        results / f"{name}_rank{rank}.pt",
    )


def main(results: Path) -> None:
    torch.set_num_threads(1)
    distributed.init_from_env(backend="gloo")  # the trainer joins this group
    data = make_data(96)

    deterministic = Trainer(make_model(deterministic=True), data, TrainConfig(**CONFIG, out_dir=str(results / "run_det")))
    deterministic.fit()
    save_weights(deterministic, results, "deterministic")

    full = Trainer(make_model(), data, TrainConfig(**CONFIG, out_dir=str(results / "run_full")))
    full.fit()
    save_weights(full, results, "full")

    stopped = Trainer(make_model(), data, TrainConfig(**CONFIG, out_dir=str(results / "run_resumed")))
    stopped.fit(stop_at=4)
    torch.manual_seed(1000 + stopped.context.rank)  # the resume must restore every process's generator
    checkpoint = latest_checkpoint(results / "run_resumed")
    resumed = Trainer.from_checkpoint(checkpoint, data)
    resumed.fit()
    save_weights(resumed, results, "resumed")

    torch.manual_seed(0)  # the same initial weights on both processes (DDP also broadcasts rank 0's)
    deep = Trainer(build_model(DEEP_MODEL), deep_images(32), TrainConfig(**{**CONFIG, "steps": 4}))
    deep.fit()
    save_weights(deep, results, "deep")
    distributed.cleanup()


if __name__ == "__main__":
    assert int(os.environ["WORLD_SIZE"]) == 2, "run under torchrun with 2 processes"
    main(Path(sys.argv[1]))
