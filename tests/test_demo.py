"""The main job (python -m fastvae.demo) trains: the test ELBO improves, and the IWAE
bound it reports is above the final ELBO."""
import subprocess
import sys

import torch

from fastvae import demo


def test_bars_are_deterministic_binary_images():
    first, again = demo.make_bars(64, seed=3), demo.make_bars(64, seed=3)
    assert torch.equal(first, again)
    assert first.shape == (64, 64) and set(first.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first, demo.make_bars(64, seed=4))


def test_short_training_run_improves_the_elbo():
    lines = []
    result = demo.train(epochs=4, num_train=2048, num_test=256, iwae_samples=16, log=lines.append)
    elbo = result["test_elbo"]
    assert len(elbo) == 4 and all(torch.isfinite(torch.tensor(elbo)))
    assert elbo[-1] > elbo[0] + 1.0, elbo
    assert result["test_iwae"] >= elbo[-1] - 0.5  # IWAE (K=16) bounds log p(x) tighter than the ELBO
    assert any("test ELBO" in line for line in lines) and "IWAE" in lines[-1]


def test_free_bits_run():
    result = demo.train(epochs=1, num_train=512, num_test=128, free_bits=0.5, iwae_samples=4, log=lambda _: None)
    assert torch.isfinite(torch.tensor(result["test_elbo"])).all()


def test_module_entry_point_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "fastvae.demo", "--epochs", "1", "--num-train", "256", "--iwae-samples", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert "epoch   1" in completed.stdout and "IWAE" in completed.stdout
